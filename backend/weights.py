"""Finding checkpoints: in the user's ``--weights`` folder first, then in the Hugging Face cache.

Nothing here downloads. When a file is missing the report says which, and gives the exact
``hf download`` command that fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError
from .pipelines.base import WeightsReport
from .protocol import ErrorCode

HUNYUAN3D_1_REPO = "tencent/Hunyuan3D-1"


@dataclass(frozen=True)
class WeightFile:
    """One checkpoint file of a Hugging Face model repository.

    Args:
        repo_id: the repository, e.g. ``tencent/Hunyuan3D-1``.
        path: the file's path inside the repository (and inside a ``--local-dir`` download).
        include: the ``--include`` pattern that downloads it with its siblings.
    """

    repo_id: str
    path: str
    include: str

    def download_command(self, weights_dir: str | None) -> str:
        command = f'hf download {self.repo_id} --include "{self.include}"'
        return command + (f' --local-dir "{weights_dir}"' if weights_dir else "")


SVRM_WEIGHTS = WeightFile(HUNYUAN3D_1_REPO, "svrm/svrm.safetensors", "svrm/*")


def find_in_folder(file: WeightFile, weights_dir: str | Path) -> Path | None:
    """The file under ``weights_dir``, laid out as ``hf download --local-dir`` leaves it, or in that folder itself."""
    root = Path(weights_dir).expanduser()
    for candidate in (root / file.path, root / Path(file.path).name):
        if candidate.is_file():
            return candidate
    return None


def find_in_hf_cache(file: WeightFile, cache_dir: str | Path | None = None) -> Path | None:
    """The file in the local Hugging Face cache (newest cached revision), without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(file.repo_id, file.path, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def find(file: WeightFile, weights_dir: str | None, cache_dir: str | Path | None = None) -> Path | None:
    """The file in ``weights_dir`` if given and there, else in the Hugging Face cache; unchecked."""
    path = find_in_folder(file, weights_dir) if weights_dir else None
    return path if path is not None else find_in_hf_cache(file, cache_dir)


def locate(file: WeightFile, weights_dir: str | None, cache_dir: str | Path | None = None) -> tuple[Path | None, WeightsReport]:
    """Where ``file`` is (None when absent or unreadable), and the report ``check_weights`` returns for it."""
    path = find(file, weights_dir, cache_dir)
    download = file.download_command(weights_dir)
    if path is None:
        searched = f"{weights_dir} and the Hugging Face cache" if weights_dir else "the Hugging Face cache"
        return None, WeightsReport(ready=False, where=f"searched {searched}", missing=[f"{file.repo_id}: {file.path}"], download=download)
    problem = unreadable_reason(path)
    if problem is not None:
        return None, WeightsReport(ready=False, where=str(path), missing=[f"{file.path} ({problem})"], download=download)
    return path, WeightsReport(ready=True, where=str(path))


def unreadable_reason(path: Path) -> str | None:
    """Why a safetensors file can't be used (truncated, not safetensors), or None when its header reads."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        return f"unreadable: {exc}"
    return None


def require(file: WeightFile, weights_dir: str | None, cache_dir: str | Path | None = None) -> Path:
    """The file's path, or a WEIGHTS_MISSING / WEIGHTS_CORRUPT error carrying the download command."""
    path, report = locate(file, weights_dir, cache_dir)
    if path is not None:
        return path
    if find(file, weights_dir, cache_dir) is None:
        raise BackendError(ErrorCode.WEIGHTS_MISSING, f"missing {', '.join(report.missing)} ({report.where})", hint=report.download)
    raise BackendError(ErrorCode.WEIGHTS_CORRUPT, f"{report.where}: {', '.join(report.missing)}",
                       hint=f"delete it and download it again: {report.download}")
