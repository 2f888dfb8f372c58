"""Training checkpoints: atomic writes, `latest` lookup, pruning and the loop's position.

A checkpoint is written by `accelerator.save_state` (model, optimizer, learning-rate schedule,
RNG states and objects registered for checkpointing, such as the EMA) into a hidden
`.checkpoint-N.partial` folder, together with `training_state.json`, and only then renamed to
`checkpoint-N`. A rename within one folder is atomic on POSIX file systems, so a process killed
during a save leaves at most a partial folder, which `latest` never picks and the next run
deletes.
"""

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from typing import List, Optional

from diffusers.utils import logging

logger = logging.get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_PATTERN = re.compile(r"^\.checkpoint-\d+\.partial$")
STATE_FILE = "training_state.json"


@dataclass
class TrainingPosition:
    """Position of the training loop: optimizer steps taken, current epoch, batches consumed in it."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def complete_checkpoints(output_dir: str) -> List[str]:
    """Paths of the complete `checkpoint-N` folders in `output_dir`, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        if match and os.path.isfile(os.path.join(output_dir, name, STATE_FILE)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str, resume_from: str) -> Optional[str]:
    """Find the checkpoint folder `--resume_from_checkpoint` names; "latest" is the newest complete one, or None."""
    if resume_from == "latest":
        checkpoints = complete_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = resume_from if os.path.isdir(resume_from) else os.path.join(output_dir, resume_from)
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise ValueError(
            f"--resume_from_checkpoint {resume_from!r} is not a complete checkpoint folder (no {STATE_FILE}); "
            f"pass 'latest' or one of {[os.path.basename(p) for p in complete_checkpoints(output_dir)]}."
        )
    return path


def remove_partial_checkpoints(output_dir: str) -> None:
    """Delete folders left by saves that were killed before their rename."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if PARTIAL_PATTERN.match(name):
            logger.warning(f"removing {name}, a checkpoint whose save did not finish")
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str, position: TrainingPosition, total_limit: Optional[int]) -> str:
    """Write `checkpoint-<global_step>` atomically on every process's behalf; prune to `total_limit`."""
    name = f"checkpoint-{position.global_step}"
    partial = os.path.join(output_dir, f".{name}.partial")
    final = os.path.join(output_dir, name)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    accelerator.wait_for_everyone()

    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(partial, STATE_FILE), "w") as handle:
            json.dump(asdict(position), handle)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)
        logger.info(f"saved {name}")
        if total_limit is not None:
            for stale in complete_checkpoints(output_dir)[:-total_limit]:
                logger.info(f"removing {os.path.basename(stale)} (--checkpoints_total_limit {total_limit})")
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_position(checkpoint: str) -> TrainingPosition:
    with open(os.path.join(checkpoint, STATE_FILE)) as handle:
        return TrainingPosition(**json.load(handle))
