"""`taolu tune`: hyperparameter search with Optuna over taolu's own training runs."""
