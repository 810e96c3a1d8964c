"""finr1: the Fin-R1 recipe as a library. Never imports prefect."""
__version__ = "0.2.0"
