"""`--push_to_hub`: uploading a training run's output folder to the Hugging Face Hub.

The checks run in two stages before training. `check_hub_args` runs on every process inside
`parse_args` and needs no network: repo id syntax, offline mode, presence of a token.
`resolve_hub_repo_id` runs on the main process and makes one `whoami` call, which rejects an
invalid or read-only token and supplies the namespace of a bare repo name. `check_hub_access`
raises its error on every process. After `task.save`, the main process calls
`push_training_output`. It writes the model card and sample grid into the output folder, creates
the repo (`exist_ok=True`) and uploads the folder without checkpoints and pickles.

The token is the one huggingface_hub finds itself (HF_TOKEN, then the saved `hf auth login`).
There is deliberately no token flag, because every flag is written to `training_args.json`,
which is uploaded.
"""

import os
import shlex
from typing import Optional

from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id

from ..hub_mixin import NEVER_UPLOADED_PATTERNS
from .model_card import write_model_card

logger = get_logger(__name__, log_level="INFO")


def default_hub_model_id(output_dir: str) -> str:
    """Return the name of the output folder, the repo name used when --hub_model_id is not given."""
    return os.path.basename(os.path.abspath(output_dir))


def check_hub_args(args) -> None:
    """Reject hub flags that would make the final upload fail, without network access.

    Fills in `args.hub_model_id` (the output folder's name) when --push_to_hub is given without
    it, so `training_args.json` records the repo name that is pushed to. Raises ValueError.
    """
    if not args.push_to_hub:
        if args.hub_model_id is not None or args.hub_private_repo:
            raise ValueError(
                "--hub_model_id and --hub_private_repo only apply with --push_to_hub; add --push_to_hub to upload "
                "the run, or drop them."
            )
        return

    if args.hub_model_id is None:
        args.hub_model_id = default_hub_model_id(args.output_dir)
        source = f"the name of --output_dir ({args.hub_model_id!r}), the default --hub_model_id,"
    else:
        source = f"--hub_model_id {args.hub_model_id!r}"
    try:
        validate_repo_id(args.hub_model_id)
    except HFValidationError as error:
        raise ValueError(
            f"{source} is not a valid Hub repo id ({error}). Pass --hub_model_id as name or namespace/name."
        ) from error

    if constants.is_offline_mode():
        raise ValueError(
            "--push_to_hub needs network access, but HF_HUB_OFFLINE is set; unset it, or train without "
            "--push_to_hub and push the folder later (docs/hub.md)."
        )
    if get_token() is None:
        raise ValueError(
            "--push_to_hub needs a Hugging Face access token with write permission, but none was found: set "
            "HF_TOKEN or run `hf auth login`."
        )


def resolve_hub_repo_id(repo_id: str, api: Optional[HfApi] = None) -> str:
    """Check the token with one `whoami` call and return `repo_id` as namespace/name.

    A bare name goes to the token owner's namespace, as `create_repo` would put it. Raises
    RuntimeError when the Hub rejects the token, reports it as read-only, or the namespace is
    neither the token owner's nor one of their organizations with write access.
    """
    api = api or HfApi()
    try:
        user = api.whoami()
    except HfHubHTTPError as error:
        raise RuntimeError(
            f"--push_to_hub: the Hub rejected the access token before training started ({error}). Set HF_TOKEN "
            "to a valid token with write permission, or run `hf auth login`."
        ) from error

    role = user.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise RuntimeError(
            f"--push_to_hub: the access token of {user.get('name')!r} is read-only, so the upload would fail. "
            "Create a token with write permission and set HF_TOKEN to it, or run `hf auth login` with it."
        )
    if "/" not in repo_id:
        return f"{user['name']}/{repo_id}"

    namespace = repo_id.split("/")[0]
    writable = {user["name"]} | {org["name"] for org in user.get("orgs", []) if org.get("roleInOrg") != "read"}
    if namespace not in writable:
        raise RuntimeError(
            f"--push_to_hub: the access token of {user.get('name')!r} cannot create repos in the namespace "
            f"{namespace!r} (it can write to {sorted(writable)}). Pass --hub_model_id in one of those namespaces, or "
            "use a token of a member of the organization with write access."
        )
    # NOTE: a fine-grained token may be limited to some repos of these namespaces. This check does
    # not read those limits from whoami, so such a token can still fail at the upload.
    return repo_id


def check_hub_access(accelerator, args) -> Optional[str]:
    """Run `resolve_hub_repo_id` on the main process and raise its error on every process.

    Returns the namespace/name repo id on the main process and None on the others (and without
    --push_to_hub). A single error on the main process would leave the other processes of a
    multi-machine run waiting in their first collective call, so the outcome is broadcast.
    """
    if not args.push_to_hub:
        return None
    outcome = [None, None]  # [repo id, error message]
    if accelerator.is_main_process:
        try:
            outcome = [resolve_hub_repo_id(args.hub_model_id), None]
        except RuntimeError as error:
            outcome = [None, str(error)]
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list(outcome, from_process=0)
    if outcome[1] is not None:
        raise RuntimeError(outcome[1])
    return outcome[0] if accelerator.is_main_process else None


def upload_command(repo_id: str, folder: str) -> str:
    """Return the `hf upload` command line that uploads `folder` to `repo_id` with `NEVER_UPLOADED_PATTERNS` left out."""
    excludes = " ".join(f"--exclude {shlex.quote(pattern)}" for pattern in NEVER_UPLOADED_PATTERNS)
    return f"hf upload {shlex.quote(repo_id)} {shlex.quote(folder)} {excludes}"


def push_training_output(args, repo_id: str, global_step: int, device="cpu") -> CommitInfo:
    """Write the model card into `args.output_dir`, then create `repo_id` and upload the folder.

    Files and folders matching `NEVER_UPLOADED_PATTERNS` (checkpoints, pickles) stay local.
    Returns the upload's CommitInfo.
    """
    write_model_card(args, args.output_dir, repo_id, global_step, device=device)

    api = HfApi()
    try:
        repo = api.create_repo(repo_id, private=True if args.hub_private_repo else None, exist_ok=True)
        logger.info(f"uploading {args.output_dir} to {repo.url}, without files matching {NEVER_UPLOADED_PATTERNS}")
        # upload_folder appends its default patterns to the list it is given (huggingface_hub 2.4),
        # so it gets a copy.
        commit = api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=args.output_dir,
            commit_message=f"Upload {args.task} trained for {global_step} steps with diffusers-ext",
            ignore_patterns=list(NEVER_UPLOADED_PATTERNS),
        )
    except Exception as error:
        # The error is re-raised so the run still fails, and the log line shows that nothing trained is lost.
        logger.error(
            f"upload of {args.output_dir} to {repo_id} failed ({type(error).__name__}: {error}). The trained model and "
            f"its model card are saved in {args.output_dir}; push them later with: {upload_command(repo_id, args.output_dir)}"
        )
        raise
    logger.info(f"pushed {args.output_dir} to {repo.url} ({commit.commit_url})")
    return commit
