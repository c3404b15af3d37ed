"""The classes the classifier distinguishes, in model output order."""

LABELS: tuple[str, ...] = ("normal", "covid", "viral_pneumonia")

DISPLAY = {
    "normal": "Normal",
    "covid": "COVID-19",
    "viral_pneumonia": "Other viral pneumonia",
}
