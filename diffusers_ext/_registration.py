"""Registration of this package's classes with diffusers' loaders.

diffusers 0.42 resolves a saved pipeline's `_class_name` as an attribute of the `diffusers`
module, and loads a component listed as [library, class] in `model_index.json` only from a
library in `diffusers.pipelines.pipeline_loading_utils.LOADABLE_CLASSES` (or from a module the
caller imported). Registering adds the public classes to the `diffusers` namespace and
"diffusers_ext" to that table, so `DiffusionPipeline.from_pretrained` loads what this package
saves after `import diffusers_ext`, and saved entries name the top-level package
(["diffusers_ext", "PosteriorScheduler"]) rather than an internal module path.
"""

import diffusers
from diffusers.pipelines import pipeline_loading_utils

LIBRARY_NAME = "diffusers_ext"

# Base classes by which diffusers recognises a component and picks its save and load methods;
# the package exports these names so that the loader finds them on `diffusers_ext`.
LOADABLE_BASE_CLASSES = {
    "ModelMixin": ["save_pretrained", "from_pretrained"],
    "SchedulerMixin": ["save_pretrained", "from_pretrained"],
    "DiffusionPipeline": ["save_pretrained", "from_pretrained"],
}


def register_with_diffusers(classes) -> None:
    """Make `classes` resolvable by diffusers' pipeline loader; calling it again changes nothing."""
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
