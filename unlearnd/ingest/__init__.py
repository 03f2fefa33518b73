"""Parse and validate what admins register: datasets (`datasets`) and models (`models`).

Everything here validates completely and returns tensors plus a record; nothing touches the store, so a
caller that writes only after a parse succeeded leaves the store untouched on bad input. Problems are
raised as `IngestError` subclasses (`errors`) with a message that says what to fix.

torch is imported inside the functions that need it: the API process imports these modules at start.
"""
