"""The code inside an instance: loads the handler once, then serves invocation frames.

Kept free of heavy imports: everything here is on the cold-start path.
"""
