"""Column names of the prediction tables, kept free of heavy imports so the CLI starts fast."""

#: Columns the predictions add to a cell table, in order.
PREDICTION_COLUMNS = ("p_all_model_a", "p_all_model_b", "p_all_combined", "label", "confidence")
