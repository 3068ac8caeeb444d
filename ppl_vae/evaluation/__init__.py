"""Evaluation in nats per example: ELBO, importance-sampled log p(x), inference gaps, the
aggregate posterior, disentanglement metrics, results tables, figures, and the comparison
of EM, mean-field VI and amortized VI."""
