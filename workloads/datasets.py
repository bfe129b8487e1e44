"""Data from outside the repository (CIFAR-10/100, MNIST-style sets, image folders, read
by torchvision from a path the suite gives) and seeded synthetic data for cost-only runs.

Paths are checked when the suite loads (`check_*`), so a missing dataset stops the run
before any cell with one line naming the path and how to provide it.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.core.errors import ConfigError
from workloads.data import Split

CIFAR = {"cifar10": ("CIFAR10", "cifar-10-batches-py", 10), "cifar100": ("CIFAR100", "cifar-100-python", 100)}
MNIST_LIKE = ("mnist", "fashionmnist", "kmnist")
# Per-channel statistics used to standardise CIFAR images (the usual values).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class _CifarUnpickler(pickle.Unpickler):
    """Python's unpickler admitting only what CIFAR's batch files hold (dicts, lists, text,
    bytes, numbers and numpy arrays): a file that names any other callable is refused
    before anything in it runs. The batches are Python 2 pickles of numpy arrays."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; re-extract the python-version archive or set download: true") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError, MemoryError, RecursionError) as e:
        raise ConfigError(f"{path}: not a CIFAR batch file ({e}); refused without running anything in it; "
                          "re-extract the python-version archive") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{path}: not a CIFAR batch file (holds a {type(batch).__name__}, not a dict)")
    return batch


def _cifar_arrays(name: str, folder: Path, train: bool) -> tuple[np.ndarray, list[int]]:
    """Images (N, 32, 32, 3) uint8 and labels from the batch files, as torchvision lays them out."""
    import torchvision.datasets as tvd

    base = getattr(tvd, CIFAR[name][0])
    data, labels = [], []
    for file, _ in base.train_list if train else base.test_list:
        path = folder / file
        batch = _read_batch(path)
        x = batch.get("data")
        y = batch.get("labels", batch.get("fine_labels"))
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 \
                or not isinstance(y, list) or len(y) != len(x) or not all(isinstance(v, int) for v in y):
            raise ConfigError(f"{path}: not a CIFAR batch file (expected uint8 `data` of N x 3072 and N "
                              "integer labels)")
        data.append(x)
        labels += y
    return np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def check_cifar(name: str, root: str, download: bool, where: str) -> None:
    folder = Path(root or ".").expanduser() / CIFAR[name][1]
    if not download and not folder.is_dir():
        raise ConfigError(f"{where}: no {CIFAR[name][0]} at {folder}; extract the python-version "
                          f"archive into {Path(root or '.').expanduser()} or set download: true")


def load_cifar(name: str, root: str, download: bool, train: bool) -> Split:
    """The train or test set as standardised float tensors [N,3,32,32] and labels. Folders
    hgbench did not download are read by `_CifarUnpickler`, never by pickle itself, so
    subsets in the same format load and a crafted batch file cannot run code; a download is
    torchvision's, which checks the published MD5 sums."""
    folder = Path(root).expanduser() / CIFAR[name][1]
    if download:
        import torchvision.datasets as tvd
        try:
            getattr(tvd, CIFAR[name][0])(root=str(Path(root).expanduser()), train=train, download=True)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            raise ConfigError(f"{name} at {root}: cannot download or read it ({e})") from None
    images, labels = _cifar_arrays(name, folder, train)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return Split((x - mean) / std, torch.tensor(labels, dtype=torch.long))


def check_mnist(name: str, root: str, download: bool, where: str) -> None:
    folder = Path(root or ".").expanduser() / _mnist_class(name).__name__ / "raw"
    if not download and not folder.is_dir():
        raise ConfigError(f"{where}: no {_mnist_class(name).__name__} at {folder}; put the raw files "
                          "there (torchvision layout) or set download: true")


def _mnist_class(name: str):
    import torchvision.datasets as tvd
    return {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[name]


def load_mnist(name: str, root: str, download: bool, train: bool) -> Split:
    """Images in [0, 1] as [N,1,28,28] float tensors (background 0) and labels."""
    try:
        ds = _mnist_class(name)(root=str(Path(root).expanduser()), train=train, download=download)
    except (RuntimeError, OSError) as e:
        raise ConfigError(f"{name} at {root}: cannot read it ({e}); set download: true") from None
    return Split(ds.data.unsqueeze(1).float() / 255, ds.targets.long())


MAX_FOLDER_ENTRIES = 2_000_000  # files and folders one image folder may hold (ImageNet: 1.3M)


def scan_image_folder(root: Path, where: str) -> list[tuple[str, int]]:
    """(image path, class index) for every image under `root`'s class folders, in the order
    torchvision's ImageFolder gives. Symlinks are followed, but a folder reached twice (a
    link back up, `..`) is a loop and refused, and so is a folder of more than
    MAX_FOLDER_ENTRIES entries: either would otherwise keep a cell walking until its time
    limit."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples, seen, count = [], set(), 0
    for index, name in enumerate(classes):
        stack = [root / name]
        found = []
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in seen:
                raise ConfigError(f"{where}: {folder} leads back to a folder already read (a symlink loop); "
                                  "remove the link")
            seen.add(real)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                raise ConfigError(f"{where}: cannot read {folder} ({e.strerror})") from None
            count += len(entries)
            if count > MAX_FOLDER_ENTRIES:
                raise ConfigError(f"{where}: {root} holds more than {MAX_FOLDER_ENTRIES:,} files and folders; "
                                  "give a folder of one data set")
            for e in entries:
                if e.is_dir():
                    stack.append(Path(e.path))
                elif e.name.lower().endswith(IMG_EXTENSIONS):
                    found.append(e.path)
        samples += [(path, index) for path in sorted(found)]
    return samples


def check_folder(path: str, where: str) -> None:
    folder = Path(path).expanduser()
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise ConfigError(f"{where}: {folder} is not an image folder (one sub-folder of images per "
                          "class, as torchvision's ImageFolder reads)")
    if not scan_image_folder(folder, where):
        raise ConfigError(f"{where}: {folder} holds no images (.jpg, .png, ...) in its class folders")


def synthetic_split(n: int, channels: int, size: int, num_classes: int, seed: int) -> Split:
    """Seeded standard-normal images with uniformly drawn labels: the shapes of a paper-size
    dataset for cost-only measurement. Accuracy on it means nothing; rows say `synthetic`."""
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, channels, size, size, generator=gen),
                 torch.randint(0, num_classes, (n,), generator=gen))


def standardise(x: Tensor) -> Tensor:
    return (x - x.mean()) / x.std()
