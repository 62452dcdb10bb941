"""Plans: what apply would change, and why.

`model` holds the data (Action, Change, Plan), `diff` the pure planner, `render`
the text and JSON views, `planfile` saved plans that are refused once stale.
"""

from mlinfra.plan.model import Action, Change, Desired, Drift, FieldChange, Observed, Plan

__all__ = ["Action", "Change", "Desired", "Drift", "FieldChange", "Observed", "Plan"]
