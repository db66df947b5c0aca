"""An install without one of the C extensions the TTFT scorer uses says so once per process,
in the log, when a scorer starts (the routing is the same, at more CPU per request)."""

from __future__ import annotations

import pytest

from kvgate import native
from kvgate.config.schema import PrefixRoutingSettings
from kvgate.routing import calibration, fingerprint
from kvgate.routing.ttft_scorer import TTFTScorer
from tests.routing.factories import deployment


@pytest.mark.parametrize(("module", "attribute", "python_value", "extension"), [
    (fingerprint, "NATIVE_CHAIN", False, "_chain_native"),
    (calibration, "LineFit", calibration.PyLineFit, "_fit_native"),
])
def test_an_install_without_the_extension_says_so_once(
        module: object, attribute: str, python_value: object, extension: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(module, attribute, python_value)
    monkeypatch.setattr(native, "_warned", set())
    with caplog.at_level("WARNING", logger="kvgate.routing"):
        for _ in range(2):
            TTFTScorer("t", [deployment("r0")], PrefixRoutingSettings(), block_tokens=16)
    assert len([r for r in caplog.records
                if f"{extension} is not built" in r.message]) == 1
