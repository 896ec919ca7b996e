"""The core: intake, scheduling, workers, the results writer and the event hub."""
