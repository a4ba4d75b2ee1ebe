"""Pure domain: identifiers, the study tree, rules. No I/O."""
