"""JSON Schema -> a regex (our syntax, see `regex.py`) over the compact serialization of the schema's instances.

Invariant: every string the regex matches is the compact serialization of an instance valid under the schema;
every valid instance, serialized as `json.dumps(x, ensure_ascii=False, separators=(", ", ": "))` with object keys
in declared order and within the documented bounds below, matches.

Layout: one space after `:` and `,`, none elsewhere; declared properties in `properties` order, optional ones
may be absent; extra properties (only where `additionalProperties` allows them) come after the declared ones.

Here: the public API and `_Compiler`, which walks the schema (`$ref`, `allOf`/`anyOf`/`oneOf`, arrays, objects).
Numbers are in `json_numbers`, string content and formats in `json_strings`, `allOf` merging and the `oneOf`
disjointness check in `schema_merge`.

Documented bounds (the schema leaves these open; `SchemaOptions` overrides them):
- integers have at most `max_integer_digits` digits (16: every integer a double holds exactly, |x| <= 2**53);
  numbers likewise in their integer part, at most `max_fraction_digits` fraction digits (20: every double's
  shortest form in fixed notation, e.g. Python's `repr`) and `max_exponent_digits` exponent digits (3). An
  exponent follows a one-digit integer part (as Python and JavaScript write numbers: `1.5e+300`) and a positive
  one is at most 307, so every number is finite as a double (JSON parsers read `9e999` as infinity).
  A bound the schema states itself (`maximum`, ...) always wins over these.
- numbers with a `minimum`/`maximum` bound are written in fixed notation (no exponent): exact for any decimal
  bound. Integers never have a fraction or exponent (`1.0` is not accepted for `integer`).
- a `$ref` is compiled once: inlined where its regex is small and it is not recursive, else a rule of the
  grammar (`SchemaRegex.rules`, called as `(?&name)`), so recursion is exact up to `MAX_FRAME_DEPTH` (64) open
  calls. `allOf` members that are `$ref`s are merged in place, unrolled `max_recursion_depth` times.
  `{}`/`true` (any value) is the rule `any`, which calls itself for each nested array or object: exact up to
  the same 64 open calls.
- strings inside `pattern`/`format` values and extra property names use `json.dumps`'s escapes only; other
  strings accept every JSON escape. String lengths are unbounded unless the schema bounds them.
- a schema without `type` gets the types its keywords imply (`properties` -> object, `items` -> array, ...).
- an object schema that declares `properties` or `required` allows no other keys unless `additionalProperties`
  is a schema or `true`; one that declares neither (`{"type": "object"}`) allows any keys with any values.
  Required keys missing from `properties` come after the declared ones and take any value.
  `patternProperties` is enforced where it is exact: no other extra keys, no declared name matching a pattern,
  one schema for every pattern; its keys are written after the declared ones.
- `pattern` is an ECMA-262 search (see `regex.parse_search_pattern`): unanchored sides may hold anything.
  With `minLength`/`maxLength` both are enforced where the pattern is a simple run (`^[a-z]+$`, `^x\\d*$`),
  else the length is refused (or reported with `strict=False`). A `format` JSON Schema defines but we do not
  enforce (`iri`, `json-pointer`, `regex`, ...) is refused likewise; a name no vocabulary defines (`url`,
  `semver`) is an annotation, as validators treat it: any string.
- the grammar (main regex and rules) is at most `max_regex_chars` long; the error says so.
- `oneOf` compiles as `anyOf`: exact when no value generated for one option is valid under another (disjoint
  JSON types or constants, a required key the other option never writes, a tag property with distinct
  constants); otherwise exclusivity cannot be enforced (an error, or reported with `strict=False`).
- formats are subsets each checker accepts: date-time/time with at most 9 fraction digits, hostname with at
  most 3 labels of up to 63 characters or 8 of up to 30 (253 in all), ipv6 without embedded ipv4 or zone, uri
  with a scheme and RFC 3986 characters, email as dot-atoms@hostname.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jsonschema

from strictcall.grammars.automaton import min_cost, rule_costs
from strictcall.grammars.cancel import check_cancelled
from strictcall.grammars.errors import RegexSyntaxError, UnsupportedSchemaError
from strictcall.grammars.json_numbers import integer_range, number_range, schema_bounds
from strictcall.grammars.json_strings import (
    STRING_UNIT,
    UNENFORCED_STANDARD_FORMATS,
    grouped,
    json_escaped,
    key_not_in,
    limit_length,
    parsed_format,
)
from strictcall.grammars.regex import Alternation, Node, escape, grammar_text, parse_grammar, parse_search_pattern
from strictcall.grammars.regex_builders import alt, opt, repeat, seq
from strictcall.grammars.schema_check import check_schema
from strictcall.grammars.schema_merge import ANNOTATIONS, JSON_TYPES, excludes, merge_two, normalized, schema_types

# (property name, value regex, required) of an object's declared properties.
Entry = tuple[str, str, bool]
# Most properties `dependentRequired` may tie together (each case of their presence is a body of its own).
_MAX_DEPENDENT_PROPERTIES = 6
# A `$ref` whose regex is longer than this becomes a rule (called, not copied, wherever it is used).
_INLINE_CHARS = 2000
_ANY_RULE = "any"  # the rule of any JSON value; `$ref` rules are named r0, r1, ...
_NOTHING = "[^\\x00-\\U0010ffff]"
_FIX = "; with strict off, the rest of the schema is enforced and this keyword is reported; or remove it"


@dataclass(frozen=True)
class SchemaOptions:
    """Bounds on what a schema leaves open (see the module docstring), and on the regex's size.

    Attributes:
        max_integer_digits: digits of an unbounded integer, and of a number's integer part (16: 2**53).
        max_fraction_digits: digits after a number's decimal point (20: any double in fixed notation).
        max_exponent_digits: digits of a number's exponent (3; positive exponents stop at 307).
        max_recursion_depth: how many times one `$ref` may be merged into an `allOf` within itself.
        max_regex_chars: size limit of the produced grammar; the automaton is built from it and grows with it.
    """

    max_integer_digits: int = 16
    max_fraction_digits: int = 20
    max_exponent_digits: int = 3
    max_recursion_depth: int = 3
    max_regex_chars: int = 1_000_000

    def __post_init__(self) -> None:
        limits = {"max_integer_digits": (1, 1000), "max_fraction_digits": (0, 1000), "max_exponent_digits": (1, 10),
                  "max_recursion_depth": (0, 32), "max_regex_chars": (1000, 10**9)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"SchemaOptions.{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class SchemaRegex:
    """A compiled schema.

    Attributes:
        regex: the pattern, in our syntax, over the compact serialization (full match); it may call `rules`.
        unenforced: `(pointer, keyword)` pairs not enforced; only ever non-empty with `strict=False`.
        rules: (name, regex) of the `$ref`s compiled as rules (large or recursive ones), in definition order.
    """

    regex: str
    unenforced: tuple[tuple[str, str], ...] = field(default=())
    rules: tuple[tuple[str, str], ...] = field(default=())

    @property
    def text(self) -> str:
        """The whole grammar as one string (`regex.grammar_text`): what `GrammarCompiler.compile_regex` takes."""
        return grammar_text(self.regex, self.rules)


def json_schema_to_regex(schema: dict[str, Any] | bool, *, strict: bool = True,
                         options: SchemaOptions = SchemaOptions()) -> SchemaRegex:
    """Compile a JSON Schema to a regex over its instances' compact serialization.

    Args:
        schema: the schema (any draft from 4 to 2020-12); local `$ref`s only.
        strict: raise on any keyword that cannot be enforced; with False, enforce the rest and report it.
        options: bounds on runaway values, recursion and the regex's size.

    Returns:
        The regex and the keywords left unenforced.

    Raises:
        UnsupportedSchemaError: a keyword cannot be enforced (with `strict`), a `$ref` cannot be resolved, the
            schema accepts no value within the bounds, or the regex would exceed `options.max_regex_chars`.
    """
    check_schema(schema)
    compiler = _Compiler(schema, strict, options)
    regex = compiler.compile(schema, "")
    rules = tuple(compiler.rules.items())
    if regex is not None and rules:
        if sum(len(body) for _, body in rules) + len(regex) > options.max_regex_chars:
            raise UnsupportedSchemaError("", "$ref", f"makes the grammar longer than max_regex_chars="
                                                     f"{options.max_regex_chars}; raise it or simplify the schema")
        main, parsed = parse_grammar(grammar_text(regex, rules))
        if min_cost(main, rule_costs(parsed))[0] == math.inf:
            regex = None  # every instance would nest without end
            compiler.recursion_cut = True
    if regex is None:
        raise UnsupportedSchemaError("", "$ref" if compiler.recursion_cut else "false",
                                     "leaves no value to generate: the schema accepts no instance"
                                     + (" (each one nests another without end, or past max_recursion_depth="
                                        f"{options.max_recursion_depth} in an allOf)" if compiler.recursion_cut else
                                        " (a contradiction such as minLength above maxLength, minimum above maximum, an empty enum, "
                                        "or a required property whose schema is false)"))
    return SchemaRegex(regex, tuple(compiler.unenforced), rules)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _literal(value: Any) -> str:
    return escape(_dump(value))


def _escape_pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


class _Compiler:
    """One compilation: the root (for `$ref`), the options, the keywords left unenforced, the recursion state."""

    def __init__(self, root: dict[str, Any] | bool, strict: bool, options: SchemaOptions) -> None:
        self.root = root
        self.strict = strict
        self.options = options
        self.unenforced: list[tuple[str, str]] = []
        self.ref_counts: dict[str, int] = {}
        self.recursion_cut = False
        self.rules: dict[str, str] = {}  # rule name -> regex
        self.rule_names: dict[str, str] = {}  # $ref -> its rule's name
        self.inlined: dict[str, str | None] = {}  # $ref -> its regex, where small and not recursive
        self.compiling: dict[str, bool] = {}  # $refs being compiled -> whether they were met inside themselves

    def unsupported(self, pointer: str, keyword: str, reason: str) -> None:
        if self.strict:
            raise UnsupportedSchemaError(pointer, keyword, reason + _FIX)
        if (pointer, keyword) not in self.unenforced:
            self.unenforced.append((pointer, keyword))

    def sized(self, regex: str | None, pointer: str) -> str | None:
        if regex is not None and len(regex) > self.options.max_regex_chars:
            raise UnsupportedSchemaError(pointer, "$ref" if self.ref_counts else "properties",
                                         f"makes the regex longer than max_regex_chars="
                                         f"{self.options.max_regex_chars}; lower max_recursion_depth, raise "
                                         f"max_regex_chars, or simplify the schema")
        return regex

    def compile(self, schema: Any, pointer: str) -> str | None:
        check_cancelled()
        if schema is True:
            return self.any_value()
        if schema is False:
            return None
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(pointer, "(schema)", f"is not a JSON Schema: expected an object or a "
                                                              f"boolean, got {type(schema).__name__}")
        if "$ref" in schema:
            return self.compile_ref(schema, pointer)
        if "allOf" in schema:
            inlined: list[str] = []
            merged = self.merge_all_of(schema, pointer, inlined)
            return self.expand(inlined, lambda: self.compile(merged, pointer))
        if "anyOf" in schema or "oneOf" in schema:
            return self.sized(self.compile_union(schema, pointer), pointer)
        return self.sized(self.compile_plain(schema, pointer), pointer)

    # References.
    def resolve(self, reference: Any, pointer: str) -> tuple[Any, str]:
        if not isinstance(reference, str) or not reference.startswith("#"):
            raise UnsupportedSchemaError(pointer, "$ref", f"{reference!r} is not a local reference ('#/...'); "
                                                          f"inline the referenced schema")
        target_pointer = reference[1:]
        target: Any = self.root
        if target_pointer and not target_pointer.startswith("/"):
            raise UnsupportedSchemaError(pointer, "$ref", f"{reference!r}: anchors are not supported; use a JSON "
                                                          f"pointer such as '#/$defs/name'")
        for token in target_pointer.split("/")[1:]:
            token = token.replace("%25", "%").replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise UnsupportedSchemaError(pointer, "$ref", f"{reference!r} does not resolve in this schema")
        return target, target_pointer

    def expand(self, references: list[str], compile_inside: Callable[[], str | None]) -> str | None:
        """Run `compile_inside` with `references` counted as expanded once more; None past the depth bound."""
        counts = dict(self.ref_counts)
        for reference in references:
            self.ref_counts[reference] = self.ref_counts.get(reference, 0) + 1
        try:
            if any(self.ref_counts[reference] > self.options.max_recursion_depth for reference in references):
                self.recursion_cut = True
                return None
            return compile_inside()
        finally:
            self.ref_counts = counts

    def compile_ref(self, schema: dict[str, Any], pointer: str) -> str | None:
        reference = schema["$ref"]
        target, target_pointer = self.resolve(reference, pointer)
        siblings = {key: value for key, value in schema.items() if key != "$ref" and key not in ANNOTATIONS}
        if siblings:
            return self.compile({"allOf": [{"$ref": reference}, siblings]}, pointer)
        if reference in self.rule_names:
            return f"(?&{self.rule_names[reference]})"
        if reference in self.inlined:
            return self.inlined[reference]
        if reference in self.compiling:  # recursion: a rule, called from inside itself
            self.compiling[reference] = True
            return f"(?&{self.rule_names.setdefault(reference, f'r{len(self.rule_names)}')})"
        self.compiling[reference] = False
        counts, self.ref_counts = self.ref_counts, {}  # a $ref compiles the same wherever it is met
        try:
            body = self.compile(target, target_pointer)
        finally:
            self.ref_counts = counts
            recursive = self.compiling.pop(reference)
        if not recursive and (body is None or len(body) <= _INLINE_CHARS):
            self.inlined[reference] = body
            return body
        name = self.rule_names.setdefault(reference, f"r{len(self.rule_names)}")
        self.rules[name] = _NOTHING if body is None else body
        return f"(?&{name})"

    def inline(self, schema: Any, pointer: str, inlined: list[str], hops: int = 0) -> Any:
        """A schema with its top-level `$ref` replaced by the target (merged with siblings), for merging."""
        if not isinstance(schema, dict) or "$ref" not in schema:
            return schema
        if hops > 32:
            raise UnsupportedSchemaError(pointer, "$ref", "forms a cycle of references without any structure")
        target, _ = self.resolve(schema["$ref"], pointer)
        inlined.append(schema["$ref"])
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        target = self.inline(target, pointer, inlined, hops + 1)
        if not siblings:
            return target
        if isinstance(target, bool):
            return siblings if target else False
        return {"allOf": [target, siblings]}

    # allOf, anyOf, oneOf.
    def merge_all_of(self, schema: dict[str, Any], pointer: str, inlined: list[str]) -> Any:
        members = [{key: value for key, value in schema.items() if key != "allOf"}, *schema["allOf"]]
        merged: dict[str, Any] = {}
        pending = list(reversed(members))
        while pending:
            member = self.inline(pending.pop(), pointer, inlined)
            if member is False:
                return False
            if member is True:
                continue
            if not isinstance(member, dict):
                raise UnsupportedSchemaError(pointer, "allOf", "must hold schemas (objects or booleans)")
            if "allOf" in member:
                pending.extend(reversed([{k: v for k, v in member.items() if k != "allOf"}, *member["allOf"]]))
                continue
            merged = merge_two(merged, normalized(member), pointer, self.unsupported)
        return merged

    def compile_union(self, schema: dict[str, Any], pointer: str) -> str | None:
        if "anyOf" in schema and "oneOf" in schema:
            # Each anyOf option carries the oneOf (an allOf of the two would merge back into this same schema).
            rest = {key: value for key, value in schema.items() if key not in ("anyOf", "oneOf")}
            options = schema["anyOf"] if isinstance(schema["anyOf"], list) else []
            return self.compile({**rest, "anyOf": [{"allOf": [option, {"oneOf": schema["oneOf"]}]} for option in options]}, pointer)
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        options = schema[keyword]
        if not isinstance(options, list) or not options:
            raise UnsupportedSchemaError(pointer, keyword, "must be a non-empty list of schemas")
        siblings = {key: value for key, value in schema.items() if key != keyword}
        constrained = any(key not in ANNOTATIONS for key in siblings)
        if keyword == "oneOf" and not self.exclusive(options, siblings, pointer):
            self.unsupported(pointer, "oneOf", "has options that may overlap: exclusivity cannot be enforced "
                                               "(it would compile as anyOf)")
        return alt(self.compile({"allOf": [siblings, option]} if constrained else option,
                                f"{pointer}/{keyword}/{index}") for index, option in enumerate(options))

    def exclusive(self, options: list[Any], siblings: dict[str, Any], pointer: str) -> bool:
        """Whether no value we generate for one option is valid under another (so oneOf == anyOf)."""
        merged = [self.merge_all_of({"allOf": [siblings, option]}, pointer, []) for option in options]
        if not all(isinstance(option, dict) for option in merged):
            return False
        return all(excludes(merged[i], merged[j]) and excludes(merged[j], merged[i])
                   for i in range(len(merged)) for j in range(i))

    # Plain schemas.
    def compile_plain(self, schema: dict[str, Any], pointer: str) -> str | None:
        schema = normalized(schema)
        for keyword in ("not", "if", "then", "else", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef",
                        "$recursiveRef"):
            if keyword in schema:
                self.unsupported(pointer, keyword, "cannot be compiled to a finite-state machine")
        if "enum" in schema:
            return self.compile_enum(schema, pointer)
        types = schema_types(schema)
        if types is None:
            return self.any_value()
        unknown = types - set(JSON_TYPES)
        if unknown:
            raise UnsupportedSchemaError(pointer, "type", f"names unknown types {sorted(unknown)}; use "
                                                          f"{', '.join(JSON_TYPES)}")
        builders = {"null": lambda: "null", "boolean": lambda: "(?:true|false)",
                    "integer": lambda: self.compile_integer(schema, pointer),
                    "number": lambda: self.compile_number(schema, pointer),
                    "string": lambda: self.compile_string(schema, pointer),
                    "array": lambda: self.compile_array(schema, pointer),
                    "object": lambda: self.compile_object(schema, pointer)}
        if "number" in types:
            types = types - {"integer"}
        return alt(builders[name]() for name in JSON_TYPES if name in types)

    def compile_enum(self, schema: dict[str, Any], pointer: str) -> str | None:
        values = schema["enum"]
        if not isinstance(values, list):
            raise UnsupportedSchemaError(pointer, "enum", "must be a list of values")
        rest = {key: value for key, value in schema.items() if key != "enum" and key not in ANNOTATIONS}
        if rest:
            if isinstance(self.root, dict):
                rest = {**{key: self.root[key] for key in ("definitions", "$defs") if key in self.root}, **rest}
            validator_class = jsonschema.validators.validator_for(rest, default=jsonschema.Draft202012Validator)
            validator = validator_class(rest, format_checker=validator_class.FORMAT_CHECKER)
            values = [value for value in values if validator.is_valid(value)]
        return alt(_literal(value) for value in values)

    def compile_integer(self, schema: dict[str, Any], pointer: str) -> str | None:
        low, low_exclusive, high, high_exclusive = schema_bounds(schema)
        low_int = None if low is None else (math.floor(low) + 1 if low_exclusive else math.ceil(low))
        high_int = None if high is None else (math.ceil(high) - 1 if high_exclusive else math.floor(high))
        multiple = schema.get("multipleOf")
        if multiple is not None and Decimal(str(multiple)) != 1:
            step = Decimal(str(multiple))
            if step == step.to_integral_value() and low_int is not None and high_int is not None and \
                    step > 0 and (high_int - low_int) // int(step) < 256:
                first = -(-low_int // int(step)) * int(step)
                return alt(str(value) for value in range(first, high_int + 1, int(step)))
            self.unsupported(pointer, "multipleOf", f"{multiple} on an integer is only enforced within bounds "
                                                    f"holding at most 256 multiples")
        return integer_range(low_int, high_int, self.options.max_integer_digits)

    def compile_number(self, schema: dict[str, Any], pointer: str) -> str | None:
        if "multipleOf" in schema:
            self.unsupported(pointer, "multipleOf", "on a number cannot be compiled to a finite-state machine")
        return number_range(*schema_bounds(schema), self.options)

    def compile_string(self, schema: dict[str, Any], pointer: str) -> str | None:
        min_length, max_length = schema.get("minLength", 0), schema.get("maxLength")
        content: Node | None = None
        if "pattern" in schema:
            try:
                content = parse_search_pattern(schema["pattern"])
            except RegexSyntaxError as error:
                self.unsupported(pointer, "pattern", f"cannot be compiled: {error}")
        if "format" in schema:
            # A name no vocabulary defines is an annotation (parsed None, not a standard format): any string.
            parsed = parsed_format(schema["format"], self.options.max_integer_digits)
            if parsed is None and schema["format"] in UNENFORCED_STANDARD_FORMATS:
                self.unsupported(pointer, "format", f"{schema['format']!r} is not a supported format (supported: "
                                                    f"date-time, date, time, duration, email, hostname, ipv4, ipv6, "
                                                    f"uuid, uri, byte; names JSON Schema does not define are "
                                                    f"annotations)")
            elif parsed is not None and content is not None:
                self.unsupported(pointer, "format", "cannot be enforced together with 'pattern'")
            elif parsed is not None:
                content = parsed
        if content is None:
            return seq('"', repeat(STRING_UNIT, min_length, max_length), '"')  # None if minLength > maxLength
        if min_length or max_length is not None:
            limited = limit_length(content, min_length, max_length)
            if limited is None:
                self.unsupported(pointer, "maxLength" if max_length is not None else "minLength",
                                 "cannot be enforced together with this pattern or format")
            else:
                content = limited
        if isinstance(content, Alternation) and not content.options:
            return None
        return '"' + grouped(json_escaped(content)) + '"'

    def compile_array(self, schema: dict[str, Any], pointer: str) -> str | None:
        if schema.get("uniqueItems") is True:
            self.unsupported(pointer, "uniqueItems", "cannot be compiled to a finite-state machine")
        for keyword in ("contains", "minContains", "maxContains"):
            if keyword in schema:
                self.unsupported(pointer, keyword, "cannot be compiled to a finite-state machine")
        items = schema.get("items", True)
        if "prefixItems" in schema:
            prefix, prefix_keyword, rest, rest_keyword = schema["prefixItems"], "prefixItems", items, "items"
        elif isinstance(items, list):
            prefix, prefix_keyword = items, "items"
            rest, rest_keyword = schema.get("additionalItems", True), "additionalItems"
        else:
            prefix, prefix_keyword, rest, rest_keyword = [], "", items, "items"
        min_items, max_items = schema.get("minItems", 0), schema.get("maxItems")
        if max_items is not None:
            prefix = prefix[:max_items]
        elements = [self.compile(item, f"{pointer}/{prefix_keyword}/{index}") for index, item in enumerate(prefix)]
        rest_regex = self.compile(rest, f"{pointer}/{rest_keyword}") if max_items is None or \
            max_items > len(prefix) else None
        extra_low = max(0, min_items - len(prefix))
        extra_high = None if max_items is None else max_items - len(prefix)
        if not prefix:
            if rest_regex is None:
                body: str | None = "" if extra_low == 0 else None
            else:
                more = repeat(", " + rest_regex, max(0, extra_low - 1), None if extra_high is None else
                              extra_high - 1)
                body = seq(rest_regex, more) if extra_low else opt(seq(rest_regex, more))
        else:
            body = repeat(None if rest_regex is None else ", " + rest_regex, extra_low, extra_high)
            for index in range(len(prefix) - 1, -1, -1):
                piece = seq(", " if index else "", elements[index], body)
                body = piece if index < min_items else opt(piece)
        return self.sized(seq("\\[", body, "\\]"), pointer)

    def compile_object(self, schema: dict[str, Any], pointer: str) -> str | None:
        for keyword in ("propertyNames", "dependentSchemas"):
            if keyword in schema:
                self.unsupported(pointer, keyword, "cannot be compiled to a finite-state machine")
        properties = schema.get("properties", {})
        required = list(schema.get("required", []))
        # With nothing declared, an object schema means "any object"; with declared properties, no extras.
        additional = schema.get("additionalProperties",
                                False if ("properties" in schema or "required" in schema) else True)
        entries: list[Entry] = []  # in the order we write them
        for name, subschema in properties.items():
            value = self.compile(subschema, f"{pointer}/properties/{_escape_pointer(name)}")
            if value is None:
                if name in required:
                    return None
                continue
            entries.append((name, value, name in required))
        for name in required:
            if name not in properties:  # any value, unless additionalProperties says otherwise
                value = self.compile(schema.get("additionalProperties", True), f"{pointer}/additionalProperties")
                if value is None:
                    return None
                entries.append((name, value, True))
        keys = self.pattern_keys(schema, pointer, [*properties, *required], additional) \
            if "patternProperties" in schema else None
        if keys is not None:  # the first pattern's schema is every pattern's
            pattern, value_schema = next(iter(schema["patternProperties"].items()))
            value = self.compile(value_schema, f"{pointer}/patternProperties/{_escape_pointer(pattern)}")
            key = keys[0] if len(keys) == 1 else Alternation(tuple(keys))
            extra = None if value is None else seq('"', grouped(json_escaped(key)), '"', ": ", value)
        else:
            extra_value = None if additional is False else self.compile(additional, f"{pointer}/additionalProperties")
            extra = None if extra_value is None else seq(key_not_in(name for name, _, _ in entries), ": ", extra_value)
        cases = self.dependency_cases(schema, pointer, entries, extra is not None)
        return self.sized(seq("\\{", alt(self.object_body(schema, pointer, case, extra) for case in cases), "\\}"), pointer)

    def pattern_keys(self, schema: dict[str, Any], pointer: str, declared: list[str], additional: Any) -> list[Node] | None:
        """The key languages of `patternProperties` where it is exact, else None (and reported): no other key may
        be written (additionalProperties false, or closed by our choice: keys matching no pattern would need the
        patterns' complement), no declared name matches a pattern (its value would need both schemas), and the
        patterns share one schema (a key two patterns match would need both)."""
        patterns: dict[str, Any] = schema["patternProperties"]
        if not patterns:
            return None
        if additional is not False:
            self.unsupported(pointer, "patternProperties", "is only enforced without additional properties (the keys "
                                                           "no pattern matches would need the patterns' complement)")
            return None
        if len({json.dumps(value, sort_keys=True) for value in patterns.values()}) > 1:
            self.unsupported(pointer, "patternProperties", "is only enforced when every pattern has the same schema "
                                                           "(a key two patterns match must validate against both)")
            return None
        keys: list[Node] = []
        for pattern in patterns:
            try:
                keys.append(parse_search_pattern(pattern))
                matched = [name for name in declared if re.search(pattern, name)]  # the validator's matching
            except (RegexSyntaxError, re.error) as error:
                self.unsupported(pointer, "patternProperties", f"pattern {pattern!r} cannot be compiled: {error}")
                return None
            if matched:
                self.unsupported(pointer, "patternProperties", f"pattern {pattern!r} matches the declared property "
                                                               f"{matched[0]!r} (its value would need both schemas)")
                return None
        return keys

    def dependency_cases(self, schema: dict[str, Any], pointer: str, entries: list[Entry], extras: bool) -> list[list[Entry]]:
        """`entries` once per allowed presence of the properties `dependentRequired` / `dependencies` (with property
        lists) name: each case writes those properties as required or not at all, so the automaton need not
        remember which were written (2**k cases for k properties: enforced up to 6). Without extra properties an
        undeclared name is never written: a rule it triggers holds, a property needing it is never written."""
        requires: dict[str, set[str]] = {}
        for keyword in ("dependentRequired", "dependencies"):
            rules = schema.get(keyword, {})
            if not isinstance(rules, dict):
                raise UnsupportedSchemaError(pointer, keyword, "must be an object")
            for trigger, needed in rules.items():
                if isinstance(needed, list) and all(isinstance(name, str) for name in needed):
                    requires.setdefault(trigger, set()).update(needed)
                else:
                    self.unsupported(pointer, keyword, f"{trigger!r} has a schema (a dependentSchemas): it cannot be "
                                                       f"compiled to a finite-state machine")
        declared = {name for name, _, _ in entries}
        if not extras:
            requires = {trigger: needed for trigger, needed in requires.items() if trigger in declared}
        involved = sorted({name for trigger, needed in requires.items() if needed - {trigger}
                           for name in {trigger, *needed} if extras or name in declared})
        if not involved:
            return [entries]
        if not set(involved) <= declared or len(involved) > _MAX_DEPENDENT_PROPERTIES:
            keyword = "dependentRequired" if "dependentRequired" in schema else "dependencies"
            self.unsupported(pointer, keyword, f"is only enforced among at most {_MAX_DEPENDENT_PROPERTIES} declared "
                                               f"properties")
            return [entries]
        cases = []
        for bits in range(1 << len(involved)):
            present = {name for i, name in enumerate(involved) if bits >> i & 1}
            if any(trigger in present and not needed <= present for trigger, needed in requires.items()) or \
                    any(is_required and name in involved and name not in present for name, _, is_required in entries):
                continue
            cases.append([(name, value, is_required or name in present) for name, value, is_required in entries
                          if name not in involved or name in present])
        return cases

    def object_body(self, schema: dict[str, Any], pointer: str, entries: list[tuple[str, str, bool]],
                    extra: str | None) -> str | None:
        """The members between the braces: `entries` in order, then any number of `extra` (None: no extras)."""
        min_properties, max_properties = schema.get("minProperties", 0), schema.get("maxProperties")
        if extra is not None and not entries and (max(min_properties, 0) or max_properties is not None):
            return _counted_extras(extra, min_properties, max_properties)
        body, can_be_empty = _declared_body(entries)
        if extra is not None:
            extras = f"(?:, {extra})*"
            body = alt([None if body is None else body + extras, extra + extras if can_be_empty else None])
        num_required = sum(is_required for _, _, is_required in entries)
        if min_properties > num_required and not (min_properties == 1 and extra is None):
            self.unsupported(pointer, "minProperties", "can only be enforced up to the number of required "
                                                       "properties, or as 1 without additionalProperties")
        if min_properties >= 1:
            can_be_empty = False
        if max_properties is not None and (extra is not None or max_properties < len(entries)):
            self.unsupported(pointer, "maxProperties", "can only be enforced when it allows every declared "
                                                       "property and no additional ones")
        return opt(body) if can_be_empty else body

    def any_value(self) -> str:
        """A call of the rule `any` (any JSON value; nested arrays and objects call it again), defined once."""
        if _ANY_RULE not in self.rules:
            string, inner = f'"{STRING_UNIT}*"', f"(?&{_ANY_RULE})"
            self.rules[_ANY_RULE] = alt([  # type: ignore[assignment]  # never None: it has options
                "null", "true", "false", number_range(None, False, None, False, self.options), string,
                f"\\[(?:{inner}(?:, {inner})*)?\\]", f"\\{{(?:{string}: {inner}(?:, {string}: {inner})*)?\\}}"])
        return f"(?&{_ANY_RULE})"


def _declared_body(entries: list[tuple[str, str, bool]]) -> tuple[str | None, bool]:
    """The declared properties in order, each optional one maybe absent; and whether all of them may be."""
    body = None
    can_be_empty = True
    for name, value, is_required in entries:
        item = _literal(name) + ": " + value
        with_previous = None if body is None else body + (", " + item if is_required else opt(", " + item))
        body = alt([with_previous, item if can_be_empty else None])
        can_be_empty = can_be_empty and not is_required
    return body, can_be_empty


def _counted_extras(extra: str, min_properties: int, max_properties: int | None) -> str | None:
    """An object's body of only extra properties (`extra`: one key and value), as many as the bounds allow."""
    low = max(min_properties, 0)
    more = repeat(", " + extra, max(0, low - 1), None if max_properties is None else max_properties - 1)
    inner = seq(extra, more) if max_properties != 0 else None
    return inner if low else opt(inner)
