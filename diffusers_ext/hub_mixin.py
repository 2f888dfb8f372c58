"""Additions to diffusers' `push_to_hub`: the "diffusers-ext" card tag and an upload guard.

diffusers 0.42.1's `PushToHubMixin.push_to_hub` (and `save_pretrained(..., push_to_hub=True)`)
creates the repo, writes a model card with `populate_model_card`, which sets `library_name:
diffusers` but adds no tags, and then uploads the folder through `PushToHubMixin._upload_folder`.
That method is the one step every diffusers push path goes through after the card is written, so
`HubCardMixin` overrides it. The override tags the card, rejects folders holding pickles or
training checkpoints, and then calls diffusers' own implementation.
"""

import os
from typing import List

from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects

LIBRARY_TAG = "diffusers-ext"

# Files and folders that are never uploaded: accelerate training checkpoints (complete and
# partial) and pickle-based weight or state files, which run code when loaded. The patterns are
# fnmatch patterns matched against paths relative to the uploaded folder, as huggingface_hub's
# `upload_folder(ignore_patterns=...)` matches them ("*" also matches "/").
NEVER_UPLOADED_PATTERNS = [
    "checkpoint-*",
    "*/checkpoint-*",
    ".checkpoint-*",
    "*/.checkpoint-*",
    "*.pkl",
    "*.pickle",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
]


def find_never_uploaded(folder: str) -> List[str]:
    """Return the paths under `folder`, relative and sorted, that match `NEVER_UPLOADED_PATTERNS`."""
    paths = []
    for root, _, files in os.walk(folder):
        for name in files:
            paths.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(filter_repo_objects(paths, allow_patterns=NEVER_UPLOADED_PATTERNS))


def add_card_tags(card_path: str, tags: List[str]) -> ModelCard:
    """Add the missing `tags` to the model card file at `card_path`, keeping its other content."""
    card = ModelCard.load(card_path)
    current = list(card.data.tags or [])
    card.data.tags = current + [tag for tag in tags if tag not in current]
    card.save(card_path)
    return card


class HubCardMixin:
    """Mixin for diffusers classes with `PushToHubMixin`; it must precede them in the bases.

    Pushes made through `push_to_hub` or `save_pretrained(..., push_to_hub=True)` then carry the
    "diffusers-ext" tag on their model card. A folder that contains files matching
    `NEVER_UPLOADED_PATTERNS` is rejected before any upload. That happens with
    `safe_serialization=False` (pickled `.bin` weights), or when `save_pretrained(push_to_hub=True)`
    writes into a training output folder that contains checkpoints.
    """

    # NOTE: `_upload_folder` is private to diffusers. Its signature is that of diffusers 0.42.1,
    # the only minor version setup.cfg allows; tests/test_hub.py fails if the tag goes missing.
    def _upload_folder(self, working_dir, repo_id, token=None, commit_message=None, create_pr=False, subfolder=None):
        """Check and tag the folder diffusers is about to upload, then upload it with diffusers' implementation."""
        rejected = find_never_uploaded(working_dir)
        if rejected:
            raise ValueError(
                f"rejected the upload of {working_dir} to {repo_id}: it contains pickle or checkpoint files "
                f"{rejected[:5]}{' ...' if len(rejected) > 5 else ''}. Push with safe_serialization=True "
                "(the default), or call push_to_hub(), which uploads a fresh folder, instead of "
                "save_pretrained(push_to_hub=True) on a training output folder."
            )
        card_path = os.path.join(working_dir, "README.md")
        if os.path.isfile(card_path):
            add_card_tags(card_path, [LIBRARY_TAG])
        return super()._upload_folder(
            working_dir,
            repo_id,
            token=token,
            commit_message=commit_message,
            create_pr=create_pr,
            subfolder=subfolder,
        )
