"""GitLab's hooks: the receiver, and what it heard, recorded for the sensor."""
