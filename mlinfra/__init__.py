"""mlinfra: Terraform-style declarative MLOps.

A project declares its machine-learning estate in YAML; `mlinfra plan` shows what
would change and `mlinfra apply` makes it so through a provider.
"""

__version__ = "0.1.0"
