"""Shared UI code of the LungLens Streamlit app (session state, widgets, charts)."""
