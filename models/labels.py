"""The classes the classifier distinguishes, in model output order."""

LABELS: tuple[str, ...] = ("normal", "covid", "pneumonia")

DISPLAY = {
    "normal": "Normal",
    "covid": "COVID-19",
    "pneumonia": "Non-COVID pneumonia",
}

#: Older names that datasets and manifests may still use, and the label each means now.
#: ``viral_pneumonia`` (model 1.x) is part of today's broader non-COVID pneumonia class.
ALIASES = {"viral_pneumonia": "pneumonia"}


def canonical(label: str) -> str:
    """A dataset's label in today's vocabulary (unknown names pass through for the caller)."""
    return ALIASES.get(label, label)
