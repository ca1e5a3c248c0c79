"""Training the expression models from FER2013 / FER+: data, labels, augment, model, train, evaluate,
calibrate, export and model cards. Needs the `train` extra (`eval` for evaluation alone)."""
