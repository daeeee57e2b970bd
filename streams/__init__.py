"""The streaming half of COMPASS-ECDA: Faust agents from prompt-events to drift-events."""
