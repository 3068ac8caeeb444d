"""Constructor parameters checked against scikit-learn's declared constraints.

The estimators declare ``_parameter_constraints`` as scikit-learn's do; :func:`validate`
runs scikit-learn's check and turns its ``InvalidParameterError`` into this project's
one-line :class:`~ppl_vae.errors.ConfigError`, "<name> must be <allowed>; got <value>",
worded from the same constraints.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    make_constraint,
    validate_parameter_constraints,
)

from ppl_vae.errors import ConfigError

POSITIVE_INT = Interval(Integral, 1, None, closed="left")
NON_NEGATIVE_INT = Interval(Integral, 0, None, closed="left")
POSITIVE = Interval(Real, 0, None, closed="neither")
NON_NEGATIVE = Interval(Real, 0, None, closed="left")
# scikit-learn's random_state, plus numpy's Generator (see _init.seed_from).
RANDOM_STATE = ["random_state", np.random.Generator]


class Names(StrOptions):
    """The keys of a name -> class table (such as a registry): a bad name is reported
    as the registry reports one, "unknown <kind> <name>; known <kind>s: ..."."""

    def __init__(self, table, kind):
        super().__init__(set(table))
        self.kind = kind


def _describe(constraint):
    if isinstance(constraint, Interval) and constraint.right is None \
            and constraint.left in (0, 1):
        kind = "integer" if constraint.type is Integral else "number"
        positive = constraint.left == 1 or constraint.closed in ("right", "neither")
        if constraint.type is Integral or constraint.left == 0:
            return f"a {'positive' if positive else 'non-negative'} {kind}"
    if isinstance(constraint, StrOptions):
        return f"one of {sorted(constraint.options)}"
    return str(constraint)


def _message(name, value, constraints):
    constraints = [make_constraint(c) for c in constraints]
    names = [c for c in constraints if isinstance(c, Names)]
    if names and isinstance(value, str):
        known = ", ".join(repr(option) for option in sorted(names[0].options))
        return f"unknown {names[0].kind} {value!r}; known {names[0].kind}s: {known}"
    allowed = [_describe(c) for c in constraints if str(c) != "None"]
    if len(allowed) < len(constraints):
        allowed.append("None")
    return f"{name} must be {' or '.join(allowed)}; got {value!r}"


def validate(params, constraints, caller):
    """Check ``params`` (name -> value) against ``constraints`` (scikit-learn's format).

    Raises
    ------
    ConfigError
        For the first parameter that satisfies none of its constraints.
    """
    try:
        validate_parameter_constraints(constraints, params, caller_name=caller)
    except InvalidParameterError:
        for name, value in params.items():
            allowed = [make_constraint(c) for c in constraints.get(name, [])]
            if allowed and not any(c.is_satisfied_by(value) for c in allowed):
                raise ConfigError(_message(name, value, constraints[name])) from None
        raise
