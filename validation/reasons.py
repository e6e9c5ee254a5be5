"""Quarantine reason codes, in the order a row is judged: the first failing rule names the reason."""

MALFORMED_RECORD = "malformed_record"      # cannot be split into fields: wrong column count, broken JSON, truncated line
BAD_ENCODING = "bad_encoding"              # the line is not valid UTF-8
MISSING_COLUMN = "missing_column"          # the file lacks a column of the contract
TYPE_MISMATCH = "type_mismatch"            # a value does not parse as the field's type
MISSING_REQUIRED = "missing_required"      # a required field (or key) is empty
OUT_OF_RANGE = "out_of_range"              # below minimum / above maximum
NOT_IN_ENUM = "not_in_enum"                # not one of the allowed values
PATTERN_MISMATCH = "pattern_mismatch"      # does not match the field's pattern
BAD_LENGTH = "bad_length"                  # text shorter than minLength or longer than maxLength
FUTURE_EVENT_TIME = "future_event_time"    # event time later than the run time plus the contract's tolerance
LATE_EVENT = "late_event"                  # event time outside the partition of the landing folder it came in
TOO_LATE = "too_late"                      # a stream row whose window closed: behind the watermark by more than the allowed lateness
DUPLICATE_KEY = "duplicate_key"            # an older row with the same key in the same partition (the latest wins)
