"""Registration of this package's classes with diffusers' loaders.

diffusers 0.42 resolves a saved pipeline's `_class_name` as an attribute of the `diffusers`
module, and loads a component listed as [library, class] in `model_index.json` only from a
library in `diffusers.pipelines.pipeline_loading_utils.LOADABLE_CLASSES` (or from a module the
caller imported). For a Hub id, its download step also skips components of libraries outside
that table unless their code ships in the repository. Registering therefore

- adds the public classes to the `diffusers` namespace, so `_class_name` and scheduler
  `_compatibles` resolve;
- adds "diffusers_ext" to `LOADABLE_CLASSES`, so saved entries name the top-level package
  (["diffusers_ext", "PosteriorScheduler"]) rather than an internal module path, and loading
  from a folder, the Hub cache or a Hub id imports the package and finds its classes;
- lists our schedulers among the `_compatibles` of the diffusers schedulers whose configs they
  read, so `pipe.scheduler.compatibles` offers them.

These are internals of diffusers, so the tested release range is pinned in setup.cfg and checked
here at import time.
"""

import os

import diffusers
from diffusers.pipelines import pipeline_loading_utils
from packaging import version

LIBRARY_NAME = "diffusers_ext"
TESTED_DIFFUSERS = (version.Version("0.42.0"), version.Version("0.43.0"))  # [lowest, first untested)
SKIP_CHECK_VARIABLE = "DIFFUSERS_EXT_SKIP_VERSION_CHECK"

# Base classes by which diffusers recognises a component and picks its save and load methods.
# The package exports these names, because the loader looks them up on `diffusers_ext`.
LOADABLE_BASE_CLASSES = {
    "ModelMixin": ["save_pretrained", "from_pretrained"],
    "SchedulerMixin": ["save_pretrained", "from_pretrained"],
    "DiffusionPipeline": ["save_pretrained", "from_pretrained"],
}


def check_diffusers_version(installed: str = diffusers.__version__) -> None:
    """Raise ImportError for a diffusers release outside the range the registration is tested on."""
    if os.environ.get(SKIP_CHECK_VARIABLE) == "1":
        return
    lowest, first_untested = TESTED_DIFFUSERS
    if not lowest <= version.Version(version.Version(installed).base_version) < first_untested:
        raise ImportError(
            f"diffusers_ext registers itself through diffusers internals tested on diffusers >={lowest},<{first_untested}, "
            f"but diffusers {installed} is installed. Install a tested release (pip install 'diffusers>={lowest},"
            f"<{first_untested}'), or set {SKIP_CHECK_VARIABLE}=1 to try this one at your own risk."
        )
    if not isinstance(getattr(pipeline_loading_utils, "LOADABLE_CLASSES", None), dict):
        raise ImportError(
            f"diffusers {installed} has no pipeline_loading_utils.LOADABLE_CLASSES table; diffusers_ext cannot register."
        )


def register_with_diffusers(classes, scheduler_compatibles=None) -> None:
    """Make `classes` resolvable by diffusers' loaders; calling it again changes nothing.

    `scheduler_compatibles` maps a diffusers scheduler class to names of our schedulers to add
    to its `_compatibles`.
    """
    check_diffusers_version()
    for cls in classes:
        existing = getattr(diffusers, cls.__name__, None)
        if existing is not None and existing is not cls:
            raise RuntimeError(
                f"diffusers already defines {cls.__name__} ({existing.__module__}); diffusers_ext cannot register "
                "a class of the same name."
            )
        setattr(diffusers, cls.__name__, cls)

    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(LIBRARY_NAME, dict(LOADABLE_BASE_CLASSES))
    pipeline_loading_utils.ALL_IMPORTABLE_CLASSES.update(LOADABLE_BASE_CLASSES)

    for scheduler_cls, names in (scheduler_compatibles or {}).items():
        scheduler_cls._compatibles = list(scheduler_cls._compatibles) + [
            name for name in names if name not in scheduler_cls._compatibles
        ]
