"""Reference profiles, drift statistics, prediction capture and metric definitions."""
