"""The built-in robust rules, one module each (the module's name is the rule's): see ``rule.py``."""
