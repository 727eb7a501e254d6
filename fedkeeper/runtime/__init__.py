"""Code that runs inside the deployed functions.

Depends only on numpy, pymongo and the standard library, so that packaging can copy this folder into every
function zip as it is.
"""
