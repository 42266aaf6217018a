"""Consultations, messages and reply rules. No transport, driver or SDK imports here."""
