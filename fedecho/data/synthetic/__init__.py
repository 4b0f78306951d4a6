"""Synthetic echocardiography: a beating-heart phantom rendered as B-mode, in every data format.

>>> from fedecho.data.synthetic import synthesize, SCANNER_STYLES
>>> summary = synthesize("camus", "/tmp/camus_synth", patients=20, seed=0, style="site_a")  # doctest: +SKIP

The generator is the demo's embedded data (one style per virtual hospital site), the fixture
source for formats without local data, and realistic enough to learn from: views are
distinguishable, masks match the drawn anatomy and the EF / volume labels (Simpson's rule), and
age, aortic-stenosis grade and wall thickness leave learnable traces in the images.

Modules: ``styles`` (scanner styles), ``cohort`` (patients and labels), ``anatomy`` (heart sizes
and cardiac cycle), ``canvas`` / ``tissue`` / ``apical`` / ``parasternal`` / ``phantom`` (drawing
the views and masks), ``render`` (speckle, attenuation, log compression), ``acquisition`` (one
rendered cine), ``formats`` (Samples per dataset), ``generate`` (:func:`synthesize`).
"""

from fedecho.data.synthetic.acquisition import Acquisition, acquire
from fedecho.data.synthetic.anatomy import CardiacClock, Heart
from fedecho.data.synthetic.cohort import (
    IMAGE_QUALITIES,
    Patient,
    assign_splits,
    make_cohort,
    make_patient,
)
from fedecho.data.synthetic.formats import DEFAULT_IMAGE_SIZES, LVH_CALCS
from fedecho.data.synthetic.generate import (
    SYNTH_FORMATS,
    SynthSummary,
    generate_samples,
    synthesize,
)
from fedecho.data.synthetic.phantom import PHANTOM_VIEWS
from fedecho.data.synthetic.styles import SCANNER_STYLES, STYLE_CHOICES, ScannerStyle

__all__ = [
    "DEFAULT_IMAGE_SIZES",
    "IMAGE_QUALITIES",
    "LVH_CALCS",
    "PHANTOM_VIEWS",
    "SCANNER_STYLES",
    "STYLE_CHOICES",
    "SYNTH_FORMATS",
    "Acquisition",
    "CardiacClock",
    "Heart",
    "Patient",
    "ScannerStyle",
    "SynthSummary",
    "acquire",
    "assign_splits",
    "generate_samples",
    "make_cohort",
    "make_patient",
    "synthesize",
]
