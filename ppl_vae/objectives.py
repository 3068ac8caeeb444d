"""Training objectives: which ELBO estimator SVI optimises.

The objectives are Pyro's own ``ELBO`` classes, chosen by name from the registry.
``TraceMeanField_ELBO`` uses the closed-form KL(q(z|x) || p(z)) where torch knows it
(a diagonal normal guide against a normal prior) and falls back to Monte Carlo elsewhere;
``Trace_ELBO`` estimates the whole bound by Monte Carlo. Scaling the KL term (beta-VAE,
annealing) is done with ``poutine.scale`` inside the model and guide, not here.
"""

from ppl_vae.registry import lookup


def make_objective(name="meanfield", *, num_particles=1):
    """Build the ELBO named ``name`` with ``num_particles`` vectorized samples per data point.

    ``max_plate_nesting=1``: the only plate is the data plate, so particles can be
    vectorized along dimension -2 without Pyro tracing the model first to find out.
    """
    cls = lookup("objective", name)
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
               max_plate_nesting=1)
