"""Finding checkpoints: in the user's ``--weights`` folder first, then in the Hugging Face cache.

Nothing here downloads on its own. When a file is missing the report says which, and gives the
exact ``hf download`` command that fetches it; ``download`` runs such a download when the user
asks for one (``python -m backend download``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError
from .pipelines.base import WeightsReport
from .protocol import ErrorCode

HUNYUAN3D_1_REPO = "tencent/Hunyuan3D-1"
HUNYUAN_DIT_REPO = "Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers-Distilled"
HUNYUAN3D_2_REPO = "tencent/Hunyuan3D-2"
HUNYUAN3D_2MINI_REPO = "tencent/Hunyuan3D-2mini"
HUNYUAN3D_2MV_REPO = "tencent/Hunyuan3D-2mv"
HUNYUAN3D_2_1_REPO = "tencent/Hunyuan3D-2.1"


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
    from .memory.loading import WeightsError, read_safetensors_header

    try:
        read_safetensors_header(path)
    except WeightsError as exc:
        return f"unreadable: {exc.message.removeprefix(str(path) + ': ')}"
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


# -- folders of many files (diffusers and transformers layouts) ------------------------------------

@dataclass(frozen=True)
class WeightFolder:
    """A folder of a Hugging Face repository that must hold certain files to be usable.

    Args:
        repo_id: the repository.
        folder: the folder inside the repository ("" for the whole repository).
        local_name: the folder's name under ``--weights`` (upstream's ``weights/`` layout).
        required: files the folder must hold; each entry is a tuple of alternatives (the first
            one present wins). A ``.safetensors.index.json`` alternative stands for a sharded
            checkpoint whose shards must be present too.
        include: the ``--include`` patterns that download the folder.
        purpose: what the folder is for, in a few words (for reports).
    """

    repo_id: str
    folder: str
    local_name: str
    required: tuple[tuple[str, ...], ...]
    include: tuple[str, ...]
    purpose: str

    def repo_path(self, relative: str) -> str:
        return f"{self.folder}/{relative}" if self.folder else relative


def _diffusers_model(name: str) -> tuple[tuple[str, ...], ...]:
    return ((f"{name}/config.json",),
            (f"{name}/diffusion_pytorch_model.safetensors", f"{name}/diffusion_pytorch_model.safetensors.index.json"))


def _transformers_model(name: str) -> tuple[tuple[str, ...], ...]:
    return ((f"{name}/config.json",), (f"{name}/model.safetensors", f"{name}/model.safetensors.index.json"))


def _preprocessor(name: str) -> tuple[tuple[str, ...], ...]:
    return ((f"{name}/preprocessor_config.json",),)


def _tokenizer(name: str, *vocabularies: str) -> tuple[tuple[str, ...], ...]:
    return ((f"{name}/tokenizer_config.json",), (f"{name}/tokenizer.json", *(f"{name}/{v}" for v in vocabularies)))


MVD_LITE = WeightFolder(
    HUNYUAN3D_1_REPO, "mvd_lite", "mvd_lite",
    (("model_index.json",), ("scheduler/scheduler_config.json",), *_diffusers_model("unet"), *_diffusers_model("vae"),
     *_transformers_model("text_encoder"), *_tokenizer("tokenizer", "vocab.json"), *_transformers_model("vision_encoder"),
     *_preprocessor("feature_extractor_vae"), *_preprocessor("feature_extractor_clip")),
    ("mvd_lite/*",), "the lite multiview model",
)
MVD_STD = WeightFolder(
    HUNYUAN3D_1_REPO, "mvd_std", "mvd_std",
    (("model_index.json",), ("scheduler/scheduler_config.json",), *_diffusers_model("unet"), *_diffusers_model("vae"),
     *_transformers_model("vision_encoder"), *_transformers_model("vision_encoder_2"),
     *_preprocessor("feature_extractor_vae"), *_preprocessor("vision_processor"), ("uc_text_emb.pt",), ("uc_text_emb_2.pt",)),
    ("mvd_std/*",), "the standard multiview model",
)
SVRM_FOLDER = WeightFolder(HUNYUAN3D_1_REPO, "svrm", "svrm", (("svrm.safetensors",),), ("svrm/*",), "the reconstruction model")
HUNYUAN_DIT = WeightFolder(
    HUNYUAN_DIT_REPO, "", "hunyuanDiT",
    (("model_index.json",), ("scheduler/scheduler_config.json",), *_diffusers_model("transformer"), *_diffusers_model("vae"),
     *_transformers_model("text_encoder"), *_tokenizer("tokenizer", "vocab.txt"),
     *_transformers_model("text_encoder_2"), *_tokenizer("tokenizer_2", "spiece.model")),
    (), "text-to-image (HunyuanDiT), only needed for prompts",
)


def hunyuan3d_2_folder(repo_id: str, folder: str, purpose: str) -> WeightFolder:
    """A Hunyuan3D-2 model folder (``config.yaml`` and one ``model.fp16.safetensors``), under its own name as upstream lays it out."""
    return WeightFolder(repo_id, folder, folder, (("config.yaml",), ("model.fp16.safetensors",)),
                        (f"{folder}/config.yaml", f"{folder}/model.fp16.safetensors"), purpose)


# Hunyuan3D-2 pipelines: (DiT folder, the turbo VAE that FlashVDM decoding swaps in).
_H2_VAE_TURBO = hunyuan3d_2_folder(HUNYUAN3D_2_REPO, "hunyuan3d-vae-v2-0-turbo", "the FlashVDM VAE of Hunyuan3D-2")
_H2MINI_VAE_TURBO = hunyuan3d_2_folder(HUNYUAN3D_2MINI_REPO, "hunyuan3d-vae-v2-mini-turbo", "the FlashVDM VAE of Hunyuan3D-2mini")
HUNYUAN3D_2_MODELS: dict[str, tuple[WeightFolder, WeightFolder]] = {
    f"hunyuan3d-2{family}{variant}": (hunyuan3d_2_folder(repo, f"{folder}{variant}", f"the Hunyuan3D-2{family}{variant} shape model"), vae)
    for family, repo, folder, vae in (
        ("", HUNYUAN3D_2_REPO, "hunyuan3d-dit-v2-0", _H2_VAE_TURBO),
        ("mini", HUNYUAN3D_2MINI_REPO, "hunyuan3d-dit-v2-mini", _H2MINI_VAE_TURBO),
        ("mv", HUNYUAN3D_2MV_REPO, "hunyuan3d-dit-v2-mv", _H2_VAE_TURBO),
    )
    for variant in ("", "-fast", "-turbo")
}
# Hunyuan3D-2.1: one folder whose ``.ckpt`` holds the conditioner, the DiT and the VAE. The
# repository's ``hunyuan3d-vae-v2-1`` folder repeats that VAE alone and is not needed.
HUNYUAN3D_2_1_DIT = WeightFolder(
    HUNYUAN3D_2_1_REPO, "hunyuan3d-dit-v2-1", "hunyuan3d-dit-v2-1", (("config.yaml",), ("model.fp16.ckpt",)),
    ("hunyuan3d-dit-v2-1/config.yaml", "hunyuan3d-dit-v2-1/model.fp16.ckpt"), "the Hunyuan3D-2.1 shape model",
)
# Hunyuan3D-2 Paint: the delighting model (an InstructPix2Pix folder) and the multiview paint
# models, diffusers folders whose 2.5D UNet and VAE come as ``.safetensors`` or ``.bin`` (the
# release has both for the paint UNet and VAE; the turbo folder's VAE is ``.bin`` only). Only the
# parts the texture stage runs are required (the paint folders' text encoder and image encoder are
# unused: their UNet carries learned prompt embeddings).
HUNYUAN3D_2_DELIGHT = WeightFolder(
    HUNYUAN3D_2_REPO, "hunyuan3d-delight-v2-0", "hunyuan3d-delight-v2-0",
    (("model_index.json",), ("scheduler/scheduler_config.json",), *_diffusers_model("unet"), *_diffusers_model("vae"),
     *_transformers_model("text_encoder"), *_tokenizer("tokenizer", "vocab.json")),
    ("hunyuan3d-delight-v2-0/*",), "the delighting model of Hunyuan3D-2 Paint",
)


def _paint_folder(folder: str, purpose: str) -> WeightFolder:
    def part(name: str) -> tuple[tuple[str, ...], ...]:
        return ((f"{name}/config.json",),
                (f"{name}/diffusion_pytorch_model.safetensors", f"{name}/diffusion_pytorch_model.bin"))

    # The paint UNet is released twice (.bin and .safetensors, the same weights): only the second is fetched.
    parts = ("model_index.json", "scheduler/*", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/*")
    return WeightFolder(HUNYUAN3D_2_REPO, folder, folder,
                        (("model_index.json",), ("scheduler/scheduler_config.json",), *part("unet"), *part("vae")),
                        tuple(f"{folder}/{pattern}" for pattern in parts), purpose)


HUNYUAN3D_2_PAINT = _paint_folder("hunyuan3d-paint-v2-0", "the multiview paint model of Hunyuan3D-2 Paint")
HUNYUAN3D_2_PAINT_TURBO = _paint_folder("hunyuan3d-paint-v2-0-turbo", "the turbo multiview paint model of Hunyuan3D-2 Paint")
# What ``python -m backend download MODEL`` fetches.
DOWNLOADS: dict[str, tuple[WeightFolder, ...]] = {
    "hunyuan3d-1-lite": (MVD_LITE, SVRM_FOLDER),
    "hunyuan3d-1-std": (MVD_STD, SVRM_FOLDER),
    "hunyuan3d-1-svrm": (SVRM_FOLDER,),
    "hunyuandit": (HUNYUAN_DIT,),
    "hunyuan3d-2.1": (HUNYUAN3D_2_1_DIT,),
    "hunyuan3d-2-paint": (HUNYUAN3D_2_DELIGHT, HUNYUAN3D_2_PAINT),
    "hunyuan3d-2-paint-turbo": (HUNYUAN3D_2_DELIGHT, HUNYUAN3D_2_PAINT_TURBO),
    # The turbo models decode with FlashVDM by default, so their download includes its VAE.
    **{name: (dit, vae) if name.endswith("-turbo") else (dit,) for name, (dit, vae) in HUNYUAN3D_2_MODELS.items()},
}


@dataclass
class FolderCheck:
    """Where a WeightFolder was found (None when it is not usable) and what is wrong with it otherwise."""

    folder: WeightFolder
    path: Path | None
    missing: list[str]
    corrupt: list[str]
    searched: str

    @property
    def ready(self) -> bool:
        return self.path is not None


def local_folder(folder: WeightFolder, weights_dir: str | Path) -> Path:
    return Path(weights_dir).expanduser() / folder.local_name


def check_folder(folder: WeightFolder, weights_dir: str | None, cache_dir: str | Path | None = None) -> FolderCheck:
    """Look for every required file in ``weights_dir/<local_name>``, else in the Hugging Face cache.

    A folder is used only when all its files are there and its safetensors headers read; the
    check lists every missing file (as its path in the repository) and every unreadable one.
    """
    candidates: list[tuple[str, Callable[[str], Path | None]]] = []
    if weights_dir:
        root = local_folder(folder, weights_dir)
        candidates.append((str(root), lambda relative: (root / relative) if (root / relative).is_file() else None))
    candidates.append(("the Hugging Face cache", lambda relative: _cached(folder, relative, cache_dir)))
    first: FolderCheck | None = None
    for where, lookup in candidates:
        found, missing, corrupt = _check_files(folder, lookup)
        root = _root_of(folder, found) if found else None
        if not missing and not corrupt and root is not None:
            return FolderCheck(folder, root, [], [], where)
        # Report the place that holds most of the folder (a partial download), else the first searched.
        if first is None or len(missing) + len(corrupt) < len(first.missing) + len(first.corrupt):
            first = FolderCheck(folder, None, missing, corrupt, where)
    assert first is not None
    first.searched = " and ".join(where for where, _ in candidates)
    return first


def _cached(folder: WeightFolder, relative: str, cache_dir: str | Path | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(folder.repo_id, folder.repo_path(relative), cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _root_of(folder: WeightFolder, found: dict[str, Path]) -> Path | None:
    """The folder that holds all found files, or None when they are spread over several (mixed revisions)."""
    roots = {path.parents[len(Path(relative).parts) - 1] for relative, path in found.items()}
    return roots.pop() if len(roots) == 1 else None


def _check_files(folder: WeightFolder, lookup: Callable[[str], Path | None]) -> tuple[dict[str, Path], list[str], list[str]]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    corrupt: list[str] = []
    for alternatives in folder.required:
        hit = next(((relative, path) for relative in alternatives if (path := lookup(relative)) is not None), None)
        if hit is None:
            missing.append(folder.repo_path(alternatives[0]))
            continue
        relative, path = hit
        found[relative] = path
        if relative.endswith(".safetensors.index.json"):
            shards, problem = _shards(path)
            if problem:
                corrupt.append(f"{folder.repo_path(relative)} ({problem})")
            for shard in shards:
                shard_relative = str(Path(relative).parent / shard)
                shard_path = lookup(shard_relative)
                if shard_path is None:
                    missing.append(folder.repo_path(shard_relative))
                elif (reason := unreadable_reason(shard_path)) is not None:
                    corrupt.append(f"{folder.repo_path(shard_relative)} ({reason})")
        elif relative.endswith(".safetensors") and (reason := unreadable_reason(path)) is not None:
            corrupt.append(f"{folder.repo_path(relative)} ({reason})")
    return found, missing, corrupt


def _shards(index: Path) -> tuple[list[str], str | None]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values())), None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [], f"unreadable shard index: {exc}"


def folders_download_command(folders: tuple[WeightFolder, ...] | list[WeightFolder], weights_dir: str | None) -> str:
    """One ``hf download`` per repository, each with ``--include`` for just the folders it needs."""
    commands = []
    for repo_id in dict.fromkeys(f.repo_id for f in folders):
        of_repo = [f for f in folders if f.repo_id == repo_id]
        includes = [pattern for f in of_repo for pattern in f.include]
        command = f"hf download {repo_id}"
        if includes:
            command += " --include " + " ".join(f'"{pattern}"' for pattern in includes)
        if weights_dir:
            # Folders of the whole repository go into their own named folder, as upstream lays them out.
            target = Path(weights_dir) / of_repo[0].local_name if not of_repo[0].folder else Path(weights_dir)
            command += f' --local-dir "{target}"'
        commands.append(command)
    return " && ".join(commands)


def check_folders(folders: list[WeightFolder], weights_dir: str | None, cache_dir: str | Path | None = None) -> tuple[list[FolderCheck], WeightsReport]:
    """Check each folder; the report is ready only when all are, and lists every missing file."""
    checks = [check_folder(folder, weights_dir, cache_dir) for folder in folders]
    missing = [f"{c.folder.repo_id}: {item}" for c in checks for item in c.missing]
    missing += [f"{c.folder.repo_id}: {item}" for c in checks for item in c.corrupt]
    if all(c.ready for c in checks):
        return checks, WeightsReport(ready=True, where="; ".join(f"{c.folder.purpose}: {c.path}" for c in checks))
    broken = [c.folder for c in checks if not c.ready]
    searched = "; ".join(dict.fromkeys(f"searched {c.searched}" for c in checks if not c.ready))
    return checks, WeightsReport(ready=False, where=searched, missing=missing, download=folders_download_command(broken, weights_dir))


def require_folders(folders: list[WeightFolder], weights_dir: str | None, cache_dir: str | Path | None = None) -> list[Path]:
    """Each folder's path, or one WEIGHTS_MISSING / WEIGHTS_CORRUPT error listing everything wrong and the download command."""
    checks, report = check_folders(folders, weights_dir, cache_dir)
    if report.ready:
        return [c.path for c in checks]
    code = ErrorCode.WEIGHTS_MISSING if any(c.missing for c in checks) else ErrorCode.WEIGHTS_CORRUPT
    raise BackendError(code, f"missing or unusable model files ({report.where}): {', '.join(report.missing)}",
                       hint=f"download them with: {report.download}")


def download(model: str, weights_dir: str | None, progress: Callable[[str], None] = print) -> list[Path]:
    """Fetch the folders ``model`` needs from the Hugging Face Hub; the user asked for this download.

    Args:
        model: a key of DOWNLOADS (a pipeline name, or ``hunyuandit`` for text-to-image).
        weights_dir: download into this folder in upstream's layout; None uses the Hugging Face cache.
        progress: hears one line per repository.

    Returns the path of each folder, checked as a job would check it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if model not in DOWNLOADS:
        raise BackendError(ErrorCode.BAD_PARAMETER, f"nothing to download for {model!r}", hint="choose one of " + ", ".join(DOWNLOADS))
    folders = DOWNLOADS[model]
    for repo_id in dict.fromkeys(f.repo_id for f in folders):
        of_repo = [f for f in folders if f.repo_id == repo_id]
        patterns = [pattern for f in of_repo for pattern in f.include] or None
        target = None
        if weights_dir:
            target = str(Path(weights_dir).expanduser() / (of_repo[0].local_name if not of_repo[0].folder else ""))
        progress(f"downloading {repo_id} ({', '.join(f.purpose for f in of_repo)}) to {target or 'the Hugging Face cache'}")
        try:
            snapshot_download(repo_id, allow_patterns=patterns, local_dir=target)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
            raise BackendError(ErrorCode.WEIGHTS_MISSING, f"downloading {repo_id} failed: {exc}",
                               hint="check the network connection (and that you accepted the model's licence on huggingface.co), then retry") from None
    return require_folders(list(folders), weights_dir)


def summarise_missing(missing: list[str]) -> str:
    """``repo: a/x``, ``repo: a/y``, ``repo: b/z`` -> ``repo: a/, b/ (3 files)``."""
    if not missing:
        return "Some files are missing"
    groups: dict[str, dict[str, None]] = {}
    for item in missing:
        repo, _, path = item.rpartition(": ")
        head, slash, _ = path.partition("/")
        groups.setdefault(repo, {})[head + slash] = None
    parts = [f"{repo}: {', '.join(heads)}" if repo else ", ".join(heads) for repo, heads in groups.items()]
    count = len(missing)
    return "; ".join(parts) + (f" ({count} files)" if count > 1 else "")
