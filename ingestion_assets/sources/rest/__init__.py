"""REST APIs as a source; each piece in its own module, imported directly (nothing re-exported)."""
