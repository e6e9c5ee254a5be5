"""Declarations: the project file and ODCS data contracts, compiled for the rest of millrace.

Nothing here imports another millrace package (see DESIGN.md section 2).
"""
from millrace.contracts.errors import ContractError
from millrace.contracts.model import Contract, Field, Partitioning
from millrace.contracts.loader import load_contract

__all__ = ["Contract", "ContractError", "Field", "Partitioning", "load_contract"]
