"""Tests for :mod:`partners.policy`: strict defaults, stored form and command-line settings."""

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from partners.errors import InvalidValueError
from partners.policy import Policy

NAMES = [f.name for f in attrs.fields(Policy)]

policies = st.builds(Policy, **{name: st.booleans() for name in NAMES})


def test_defaults_are_strict():
    """A new partner must sign and encrypt AS2, may not use SHA-1, opaque payloads or unsigned mail."""
    assert Policy().to_json() == {
        "require_xmldsig": False,
        "allow_opaque": False,
        "as2_require_signature": True,
        "as2_require_encryption": True,
        "allow_sha1": False,
        "allow_unsigned_mail": False,
    }


def test_from_json_of_nothing_is_the_default():
    """A missing or empty stored policy reads back as the strict default."""
    assert Policy.from_json(None) == Policy()
    assert Policy.from_json({}) == Policy()


def test_from_json_ignores_unknown_keys():
    """Keys written by a newer or older version are ignored; known keys are still applied."""
    policy = Policy.from_json({"allow_sha1": True, "allow_telepathy": True, "retired_setting": False})
    assert policy == Policy(allow_sha1=True)


def test_from_json_keeps_missing_keys_at_their_defaults():
    """A stored policy that predates a setting gets that setting's strict default."""
    assert Policy.from_json({"allow_opaque": True}) == Policy(allow_opaque=True)


@given(policies)
def test_json_round_trip(policy):
    """Every policy survives to_json/from_json unchanged, and its stored form names every setting."""
    stored = policy.to_json()
    assert set(stored) == set(NAMES)
    assert all(isinstance(v, bool) for v in stored.values())
    assert Policy.from_json(stored) == policy


@pytest.mark.parametrize("raw", ["true", "TRUE", "True", "yes", "on", "1", " true "])
def test_with_setting_true_variants(raw):
    """Every spelling of true turns a setting on."""
    assert Policy().with_setting(f"allow_sha1={raw}").allow_sha1 is True


@pytest.mark.parametrize("raw", ["false", "FALSE", "no", "off", "0", " Off"])
def test_with_setting_false_variants(raw):
    """Every spelling of false turns a setting off."""
    assert Policy().with_setting(f"as2_require_signature={raw}").as2_require_signature is False


def test_with_setting_accepts_dashes_and_changes_only_that_setting():
    """CLI-style dashed names work, and the other settings are left alone (the original is unchanged)."""
    original = Policy()
    changed = original.with_setting("allow-unsigned-mail=true")
    assert changed == attrs.evolve(original, allow_unsigned_mail=True)
    assert original == Policy()


@pytest.mark.parametrize("assignment", ["allow_telepathy=true", "allow_sha1", "=true", "", "to_json=true",
                                        "__class__=true"])
def test_with_setting_refuses_unknown_names(assignment):
    """An unknown name or a missing '=' is refused with the list of valid names."""
    with pytest.raises(InvalidValueError) as caught:
        Policy().with_setting(assignment)
    message = str(caught.value)
    assert "expected NAME=true|false with NAME one of" in message
    assert all(name in message for name in NAMES)
    assert repr(assignment) in message


@pytest.mark.parametrize("assignment", ["allow_sha1=maybe", "allow_sha1=", "allow_sha1=2", "allow_sha1=truee"])
def test_with_setting_refuses_non_boolean_values(assignment):
    """A value that is not a boolean spelling is refused, naming the assignment."""
    with pytest.raises(InvalidValueError, match="value must be true or false") as caught:
        Policy().with_setting(assignment)
    assert repr(assignment) in str(caught.value)


@given(policies, st.sampled_from(NAMES), st.booleans())
def test_with_setting_sets_exactly_the_named_value(policy, name, value):
    """NAME=true|false sets that one setting to the value and leaves every other setting as it was."""
    changed = policy.with_setting(f"{name}={str(value).lower()}")
    assert changed == attrs.evolve(policy, **{name: value})


@given(st.text())
def test_with_setting_raises_only_invalid_value_error(assignment):
    """Whatever an admin types, with_setting returns a Policy or raises InvalidValueError."""
    try:
        result = Policy().with_setting(assignment)
    except InvalidValueError:
        return
    assert isinstance(result, Policy)


def test_stored_policy_with_a_non_boolean_is_refused():
    """A hand-edited "false" string must not read as true: stored values are booleans or an error."""
    from partners.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="require_xmldsig is 'false', not true or false"):
        Policy.from_json({"require_xmldsig": "false"})
