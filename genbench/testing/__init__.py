"""The conformance kit: the model-contract checks genbench runs on its own models, for yours.

A model that passes trains, evaluates, resumes and ranks like genbench's own families::

    from genbench.testing import check_model

    def test_my_model_obeys_the_contract():
        check_model(MyModel, shape=(1, 4, 4), levels=4, hidden=8)   # kwargs go to MyModel

``check_model`` builds the model (``MyModel(shape=..., levels=..., **kwargs)``; any callable with
that signature works, e.g. ``functools.partial(hydra.utils.instantiate, cfg.model)``), runs every
check in :data:`CHECKS` on CPU and returns ``{check: "passed" | "skipped: <why>"}``; the first
failure raises :class:`ConformanceError` (an ``AssertionError``) naming the model, the check and
what is wrong. Run one check at a time with ``only=`` to get one pytest case per check::

    @pytest.mark.parametrize("check", CHECKS)
    def test_contract(check):
        check_model(MyModel, only=[check])

``from_config("<name>")`` builds the model from its yaml the way ``genbench train`` does (genbench's
config tree plus the config packages of installed plugins), so the yaml is checked too::

    check_model(from_config("mymodel", ["model.hidden=8"]))

Keep the sizes tiny: the kit draws uniform random levels, trains a few steps and, for the
``enumeration`` check, scores every input of a tiny shape. Before any evaluation check the model
gets one ``training_losses`` call in training mode (as the runner does first), so data-dependent
initialization has run. ``sample`` and ``nll`` are called under ``torch.inference_mode``, as the
evaluator calls them.
"""

from genbench.testing.config import from_config
from genbench.testing.kit import (
    CHECKS,
    EXACT_TOLERANCE,
    MAX_ENUMERATION,
    ConformanceError,
    Subject,
    check_model,
)

__all__ = [
    "CHECKS",
    "EXACT_TOLERANCE",
    "MAX_ENUMERATION",
    "ConformanceError",
    "Subject",
    "check_model",
    "from_config",
]
