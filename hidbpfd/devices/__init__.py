"""Device I/O: udev, hidraw, uhid, uinput, the uhid mirror, the injection sinks and
the report-descriptor parser."""
