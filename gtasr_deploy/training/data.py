"""Training data: random HR crops from folders of images, in a resumable, seeded order.

The order is a pure function of (seed, batch index): epoch e visits the files in
``randperm(n, seed·1_000_003 + e)`` and sample j of that stream is cropped with its own seed. So a
resumed run sees exactly the batches an uninterrupted run would, with any number of DataLoader
workers, and each DDP rank takes its own slice of every global batch. No flips (as released).

Images are decoded to 8-bit RGB; images smaller than the crop are reflect-padded; unreadable
files are logged once and replaced by the next readable file in the list.
``augment="dihedral"`` (a small-data recipe choice, not the release's) adds one of the 8
flips/rotations per crop, drawn from the crop's seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..atomic import atomic_write_text
from ..errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_EPOCH_SEED_STRIDE = 1_000_003


def scan_images(roots: Sequence[str | Path], key: str = "data.roots") -> list[str]:
    """Every image file under ``roots`` (recursive, sorted, suffix case-insensitive); ``key`` names
    the recipe key they came from in errors."""
    files: list[str] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{key}: {root} is not a folder; check {key} (paths are relative to the "
                              "current directory) or run `python -m gtasr_deploy.training.photos data/photos`")
        files += sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{key}: no images ({', '.join(IMAGE_SUFFIXES)}) under {[str(r) for r in roots]}")
    return files


def _roots_key(roots: Sequence[str | Path]) -> str:
    return json.dumps([str(r) for r in roots])


def write_file_list(cache: str | Path, roots: Sequence[str | Path], files: Sequence[str]) -> None:
    atomic_write_text(cache, json.dumps({"roots": _roots_key(roots), "files": list(files)}))


def cached_file_list(roots: Sequence[str | Path], cache: str | Path | None, *, write: bool = True) -> list[str]:
    """The file list, read from ``cache`` when it was made for the same roots, else scanned (and
    written there unless ``write`` is False).

    Keeping the list with the run means a resume sees the same files in the same order even when
    the folders changed (and large folders are not walked again)."""
    key = _roots_key(roots)
    if cache is not None and Path(cache).is_file():
        try:
            stored = json.loads(Path(cache).read_text())
            if stored.get("roots") == key and stored.get("files"):
                return list(stored["files"])
        except (OSError, json.JSONDecodeError):
            log.warning("file-list cache %s is unreadable; rescanning", cache)
    files = scan_images(roots)
    if cache is not None and write:
        write_file_list(cache, roots, files)
    return files


def read_rgb8(path: str) -> np.ndarray | None:
    """(H,W,3) uint8 RGB, or None when the file cannot be decoded. 16-bit, gray and alpha are reduced."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR uint8; drops alpha, expands gray, scales 16-bit
    if img is None or img.ndim != 3 or min(img.shape[:2]) < 1:
        return None
    return np.ascontiguousarray(img[:, :, ::-1])


def reflect_pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Pad (bottom/right) by reflection until both sides are >= size (repeats for tiny images)."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    mode = "reflect" if min(h, w) > 1 else "edge"  # reflection of a 1-px side is undefined
    return np.pad(img, ((0, max(size - h, 0)), (0, max(size - w, 0)), (0, 0)), mode=mode)


AUGMENTS = ("none", "dihedral")


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) of the 8 flips/90° rotations of an (H,W,C) image: rotate k%4 quarter turns,
    then flip left-right when k >= 4. k = 0 is the identity."""
    out = np.rot90(img, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def random_crop(img: np.ndarray, size: int, seed: int, augment: str = "none") -> np.ndarray:
    """A size×size crop at a position drawn from ``seed``; (size,size,3) uint8. ``augment="dihedral"``
    also applies one of the 8 flips/rotations, drawn from the same seed after the position."""
    img = reflect_pad_to(img, size)
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, img.shape[0] - size + 1))
    left = int(rng.integers(0, img.shape[1] - size + 1))
    crop = img[top:top + size, left:left + size]
    if augment == "dihedral":
        crop = dihedral(crop, int(rng.integers(0, 8)))
    elif augment != "none":
        raise ConfigError(f"augment {augment!r} is unknown; expected one of {AUGMENTS}")
    return crop


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    img = reflect_pad_to(img, size)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size]


def to_tensor(crop: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 → (3,H,W) float32 in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)


class CropDataset(Dataset):
    """Items are (file index, crop seed) pairs from :class:`StepSampler` → (3,crop,crop) float [0,1].

    ``cache_images``: keep every decoded image in memory (per worker) instead of decoding the
    whole file again for each crop; for small photo sets, where decoding dominates a batch."""

    def __init__(self, files: Sequence[str], crop: int, augment: str = "none", cache_images: bool = False) -> None:
        self.files = list(files)
        self.crop = crop
        self.augment = augment
        self.cache_images = cache_images
        self._decoded: dict[int, np.ndarray] = {}
        self._bad: set[int] = set()

    def _read(self, i: int) -> np.ndarray | None:
        if i in self._decoded:
            return self._decoded[i]
        img = read_rgb8(self.files[i])
        if img is not None and self.cache_images:
            self._decoded[i] = img
        return img

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        for offset in range(len(self.files)):
            i = (index + offset) % len(self.files)
            if i in self._bad:
                continue
            img = self._read(i)
            if img is not None:
                return to_tensor(random_crop(img, self.crop, seed, self.augment))
            self._bad.add(i)
            log.warning("skipping unreadable image %s", self.files[i])
        raise ConfigError(f"none of the {len(self.files)} training images can be decoded")


def check_decodable(files: Sequence[str], key: str = "data.roots") -> None:
    """ConfigError unless at least one of ``files`` decodes: checked before training, so a folder of
    undecodable files is one clear error, not a failure inside a loader worker."""
    if not any(read_rgb8(path) is not None for path in files):
        raise ConfigError(f"{key}: none of the {len(files)} training images can be decoded (first: {files[0]})")


def _sample_seed(seed: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepSampler(Sampler):
    """Yields per-rank batches [(file index, crop seed), ...] for global batches start, start+1, ...

    Global batch b holds stream positions b·G .. b·G+G−1 (G = batch_size·world_size) of the
    concatenated per-epoch permutations; rank r takes positions r·batch_size .. of it."""

    def __init__(self, num_files: int, batch_size: int, *, seed: int, start_batch: int = 0,
                 num_batches: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = num_files, batch_size, seed
        self.start, self.num_batches = start_batch, num_batches
        self.rank, self.world = rank, world_size
        self._perm_epoch, self._perm = -1, None

    def _file_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=gen).tolist(), epoch
        return self._perm[offset]

    def batch(self, b: int) -> list[tuple[int, int]]:
        first = (b * self.world + self.rank) * self.batch_size
        return [(self._file_at(p), _sample_seed(self.seed, p)) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start
        while self.num_batches is None or b < self.start + self.num_batches:
            yield self.batch(b)
            b += 1

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("StepSampler is infinite")
        return self.num_batches


class BatchDataset(Dataset):
    """Item b = global batch b of ``sampler`` as one stacked (batch_size,3,crop,crop) tensor, or
    ``(hr, transform(hr, b))`` when a transform is given (e.g. the degradation, so that the LR is
    made in the loader's worker processes, overlapping the optimizer step)."""

    def __init__(self, crops: CropDataset, sampler: StepSampler,
                 transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        self.crops, self.sampler, self.transform = crops, sampler, transform

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, b: int):
        hr = torch.stack([self.crops[item] for item in self.sampler.batch(b)])
        return hr if self.transform is None else (hr, self.transform(hr, b))


def make_loader(files: Sequence[str], *, crop: int, batch_size: int, seed: int, start_batch: int,
                num_batches: int | None = None, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                augment: str = "none", cache_images: bool = False,
                transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> DataLoader:
    """DataLoader of (batch_size,3,crop,crop) float [0,1] HR crops starting at global batch
    ``start_batch``; with ``transform``, of ``(hr, transform(hr, b))`` for global batch index b.
    Each worker builds whole batches (``num_workers`` batches in flight)."""
    sampler = StepSampler(len(files), batch_size, seed=seed, start_batch=start_batch, num_batches=num_batches,
                          rank=rank, world_size=world_size)
    order = itertools.count(start_batch) if num_batches is None else range(start_batch, start_batch + num_batches)
    dataset = BatchDataset(CropDataset(files, crop, augment, cache_images), sampler, transform)
    return DataLoader(dataset, sampler=order, batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=2 if num_workers > 0 else None)


def validation_crops(files: Sequence[str], *, crop: int, count: int) -> torch.Tensor:
    """(count',3,crop,crop) float [0,1] centre crops of the first ``count`` readable files."""
    crops = []
    for path in files:
        img = read_rgb8(path)
        if img is None:
            log.warning("skipping unreadable validation image %s", path)
            continue
        crops.append(to_tensor(centre_crop(img, crop)))
        if len(crops) == count:
            break
    if not crops:
        raise ConfigError(f"none of the {len(files)} validation images can be decoded (first: {files[0] if files else '-'}); "
                          "check data.val_roots (default: the training images of data.roots)")
    return torch.stack(crops)
