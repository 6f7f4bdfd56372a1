"""Plugin discovery: entry points register models and config folders; only registered classes join
the run-folder allowlist."""

from __future__ import annotations

import sys
import textwrap

import pytest

from genbench import plugins, trust


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A package ``fakelab`` installed as a distribution (a dist-info folder with entry points) on
    ``sys.path``, the way pip leaves one."""
    pkg = tmp_path / "fakelab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from genbench.models.base import GenerativeModel

        class Good(GenerativeModel):
            family = "flow"
            likelihood = "exact"

            def training_losses(self, x, phase):
                raise NotImplementedError

            def sample(self, n, *, generator=None, **sampler):
                raise NotImplementedError

            def nll(self, x):
                raise NotImplementedError

        class NotAModel:
            pass
    """)
    )
    info = tmp_path / "fakelab-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [genbench.models]
        good = fakelab:Good
        bad = fakelab:NotAModel
        broken = fakelab.missing:Thing

        [genbench.configs]
        fakelab = fakelab.conf
        evil = ../../etc
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.plugin_models.cache_clear()
    trust.allowed_targets.cache_clear()
    yield sys.modules.get("fakelab")
    plugins.plugin_models.cache_clear()
    trust.allowed_targets.cache_clear()
    sys.modules.pop("fakelab", None)


def test_entry_points_register_models_and_configs(installed, caplog):
    models = plugins.plugin_models()
    assert list(models) == ["good"] and models["good"].__name__ == "Good"
    assert "is not a GenerativeModel" in caplog.text and "cannot be loaded" in caplog.text
    assert plugins.config_packages() == ["fakelab.conf"]  # the path trick is skipped
    assert plugins.search_path_override() == "hydra.searchpath=[pkg://fakelab.conf]"


def test_only_registered_plugin_classes_join_the_allowlist(installed):
    trust.check_targets({"model": {"_target_": "fakelab.Good"}})
    with pytest.raises(trust.ConfigError, match="not allowed"):
        trust.check_targets({"model": {"_target_": "fakelab.NotAModel"}})


def test_families_lists_plugin_models(installed):
    from genbench.leaderboard.families import registered_models

    models = registered_models()
    assert models["good"].family == "flow" and "vae" in models


def test_plugin_models_are_shown_and_recorded_with_their_package(installed, capsys):
    from rich.console import Console

    from genbench.leaderboard.families import models_table, registered_models
    from genbench.record import versions

    assert plugins.plugin_source("good") == "fakelab 0.1"
    assert plugins.plugin_source("vae") is None
    Console(width=200).print(models_table(registered_models()))
    out = capsys.readouterr().out
    assert "good" in out and "fakelab.Good" in out and "fakelab 0.1" in out
    assert "vae  " in out and "elbo (≤)" in out and "genbench" in out
    good = plugins.plugin_models()["good"]
    assert versions(good)["fakelab"] == "0.1" and "fakelab" not in versions()
