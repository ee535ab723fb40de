"""The licences of the weights ``download`` fetches, and the user's agreement to them. Stdlib only.

Every repository ``weights.DOWNLOADS`` fetches is Tencent's, under a Hunyuan licence that
does not apply in the European Union, the United Kingdom or South Korea; the user agrees once
per licence before the first download under it. The agreement is kept in the backend's home
folder (``accepted-licences.json``); the add-on keeps its own in its preferences and passes
``--accept-license``. Nano's weights are ours (Apache-2.0) and are never downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError
from .paths import data_home
from .protocol import ErrorCode
from .weights import (
    DOWNLOADS,
    HUNYUAN3D_1_REPO,
    HUNYUAN3D_2_1_REPO,
    HUNYUAN3D_2_REPO,
    HUNYUAN3D_2MINI_REPO,
    HUNYUAN3D_2MV_REPO,
    HUNYUAN_DIT_REPO,
)

EXCLUDED_TERRITORIES = "the European Union, the United Kingdom and South Korea"
ACCEPTED_FILE = "accepted-licences.json"


@dataclass(frozen=True)
class Licence:
    name: str
    url: str

    def notice(self) -> str:
        return (f"{self.name} ({self.url}). It does not apply in {EXCLUDED_TERRITORIES}: "
                f"the weights may not be used there.")


# As each model's page states it; a repository not listed here gets its page as the link.
KNOWN: dict[str, Licence] = {
    HUNYUAN3D_1_REPO: Licence("Tencent Hunyuan Non-Commercial License",
                              f"https://huggingface.co/{HUNYUAN3D_1_REPO}/blob/main/LICENSE.txt"),
    HUNYUAN_DIT_REPO: Licence("Tencent Hunyuan Community License",
                              f"https://huggingface.co/{HUNYUAN_DIT_REPO}/blob/main/LICENSE.txt"),
    # The three Hunyuan3D-2 shape repositories share one licence; each model page links its text.
    **{repo: Licence("Tencent Hunyuan 3D 2.0 Community License", f"https://huggingface.co/{repo}")
       for repo in (HUNYUAN3D_2_REPO, HUNYUAN3D_2MINI_REPO, HUNYUAN3D_2MV_REPO)},
    HUNYUAN3D_2_1_REPO: Licence("Tencent Hunyuan 3D 2.1 Community License", f"https://huggingface.co/{HUNYUAN3D_2_1_REPO}"),
}


def licences_for(model: str) -> list[Licence]:
    """The licences of every repository ``download model`` fetches (none for a model that is not downloaded)."""
    repos = dict.fromkeys(folder.repo_id for folder in DOWNLOADS.get(model, ()))
    found = [KNOWN.get(repo) or Licence(f"the licence on {repo}'s page", f"https://huggingface.co/{repo}") for repo in repos]
    return list(dict.fromkeys(found))


def accepted_file() -> Path:
    return data_home() / ACCEPTED_FILE


def accepted() -> set[str]:
    try:
        names = json.loads(accepted_file().read_text(encoding="utf-8")).get("accepted", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in names if isinstance(name, str)}


def remember(licences: list[Licence]) -> None:
    names = sorted(accepted() | {licence.name for licence in licences})
    path = accepted_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accepted": names}, indent=1) + "\n", encoding="utf-8")


def require_agreement(model: str, accept: bool, ask: Callable[[str], str] | None, say: Callable[[str], None]) -> None:
    """Before downloading ``model``: agreement to each licence not agreed to yet, remembered once given.

    Args:
        accept: the user agreed on the command line (``--accept-license``).
        ask: asks a question and returns the answer, for an interactive terminal; None when nobody can answer.
        say: shows a line to the user.
    """
    pending = [licence for licence in licences_for(model) if licence.name not in accepted()]
    if not pending:
        return
    for licence in pending:
        say(f"{model} weights are under the {licence.notice()}")
    if not accept and ask is not None:
        accept = ask("Do you agree to these terms? [y/N] ").strip().lower() in ("y", "yes")
    if not accept:
        names = " and ".join(licence.name for licence in pending)
        raise BackendError(ErrorCode.BAD_PARAMETER, f"downloading {model} needs your agreement to the {names}",
                           hint="read it, then run the download again with --accept-license (asked once; it is remembered)")
    remember(pending)
