"""Which hospital (site) an image comes from, and which sources train which label.

The manifests name a ``source`` (the public collection). A *site* is what a held-out evaluation
leaves out as a whole: one hospital or archive with both healthy and abnormal films, so that a
held-out fold can show false positives as well as sensitivity. The table says which sources are
one site:

* ``kaggle`` adult normals (RSNA/NIH origin) and ``kaggle`` COVID → ``kaggle-adult``;
* ``kaggle`` pediatric normals are Kermany's normals → ``kermany`` with Kermany's pneumonia;
* ``siim`` (typical COVID-19), ``siim_atypical``, ``siim_indeterminate`` and ``siim_negative``
  (COVID-positive patients whose film shows no pneumonia) → ``siim`` (BIMCV + MIDRC-RICORD);
* ``nih`` normals and pneumonia → ``nih``;
* ``quex`` (COVID-QU-Ex: COVID and adult non-COVID infection, no normals) → ``quex``.

Labels (stated in the model card): the classifier answers "does this film show COVID-19
pneumonia / other pneumonia / neither". ``siim_negative`` films show no pneumonia, so they are
``normal`` for training and evaluation, although the patients had COVID-19. ``siim_atypical`` and
``siim_indeterminate`` are COVID-positive but radiologically not typical of it: they are kept out
of training and calibration (they would teach "any opacity is COVID") and are evaluated as COVID
positives, reported apart.
"""

from __future__ import annotations

SITE_COLUMN = "site"

#: Sources evaluated but never trained or calibrated on (see the module text).
EVALUATION_ONLY_SOURCES = frozenset({"siim_atypical", "siim_indeterminate"})

_SITE_OF_SOURCE = {
    "kermany": "kermany",
    "quex": "quex",
    "siim": "siim",
    "siim_negative": "siim",
    "siim_atypical": "siim",
    "siim_indeterminate": "siim",
    "nih": "nih",
}


def site_of(source: str, age_group: str = "") -> str:
    """The site of a manifest row (its ``source`` when the table has no entry)."""
    if source == "kaggle":
        return "kermany" if age_group == "pediatric" else "kaggle-adult"
    return _SITE_OF_SOURCE.get(source, source)


def trains(columns: dict[str, str]) -> bool:
    """Whether a manifest row may be used for training and calibration (not only evaluation)."""
    return columns.get("source", "") not in EVALUATION_ONLY_SOURCES
