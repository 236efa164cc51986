"""The live Streamlit dashboard."""
