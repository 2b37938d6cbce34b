"""The conversion pass: find candidates -> decide per layer -> transfer weights -> rewrite -> report.

* :mod:`.patterns` — torch.fx analysis (module-order fallback) of dw_pw / pw / std candidates;
* :mod:`.adapters` — which ``nn.Conv2d`` subclasses convert, and :func:`register_conv_adapter`;
* :mod:`.policy` — include/exclude, overrides, min channels, indivisible cg;
* :mod:`.transfer` — slice, energy assignment, std factorisation, least-squares solve;
* :mod:`.calibrate` — the two-pass layer-by-layer calibration for ``init="lsq"``;
* :mod:`.report` — :class:`ConversionReport`;
* :mod:`.api` — :func:`convert`.
"""

from .adapters import register_conv_adapter
from .api import INITS, convert
from .calibrate import recalibrate_batchnorm
from .policy import PATTERNS
from .report import ConversionReport, LayerRecord

__all__ = ["convert", "register_conv_adapter", "recalibrate_batchnorm", "ConversionReport", "LayerRecord", "PATTERNS", "INITS"]
