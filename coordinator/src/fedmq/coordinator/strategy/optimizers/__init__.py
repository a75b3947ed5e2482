"""The built-in server optimizers, one module each (the module's name is the optimizer's): see
``optimizer.py``."""
