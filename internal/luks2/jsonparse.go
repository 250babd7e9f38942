package luks2

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// maxJSONDepth matches json-c's default nesting limit used by cryptsetup.
const maxJSONDepth = 32

// maxObjectID bounds keyslot, token, segment and digest ids; cryptsetup never
// creates more than 32 objects of one kind (LUKS2_OBJECTS_MAX).
const maxObjectID = 31

// FieldError reports a JSON metadata field that is missing or malformed.
type FieldError struct {
	Field string // dotted path, e.g. "keyslots.0.area.offset"
	Want  string // what the format requires
	Found string // what the header holds
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("LUKS2 JSON %s: expected %s, found %s", e.Field, e.Want, e.Found)
}

func fieldErr(path, want, found string) error {
	return &FieldError{Field: path, Want: want, Found: found}
}

// describe renders a raw JSON value for an error message, shortened so that a
// hostile header cannot produce huge errors.
func describe(raw json.RawMessage) string {
	if raw == nil {
		return "nothing (field absent)"
	}
	kind := jsonKind(raw)
	s := string(raw)
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return kind + " " + s
}

func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "empty"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// checkStructure walks the JSON text once to enforce what encoding/json does
// not: one top-level object and nothing after it, valid UTF-8, bounded
// nesting and no duplicate keys (with duplicates, two parsers could disagree
// on which value counts).
func checkStructure(text []byte) error {
	if len(text) == 0 || text[0] != '{' {
		found := "empty text"
		if len(text) > 0 {
			found = fmt.Sprintf("byte 0x%02x", text[0])
		}
		return fieldErr("(top level)", "'{' as the first byte", found)
	}
	if !utf8.Valid(text) {
		return fieldErr("(top level)", "UTF-8 text", "invalid UTF-8")
	}
	type frame struct {
		object  bool
		wantKey bool
		keys    map[string]struct{}
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("LUKS2 JSON syntax error at byte %d: %w", dec.InputOffset(), err)
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if n := len(stack); n > 0 && stack[n-1].object {
					stack[n-1].wantKey = false
				}
				if len(stack) >= maxJSONDepth {
					return fieldErr("(top level)", fmt.Sprintf("nesting depth <= %d", maxJSONDepth),
						fmt.Sprintf("deeper nesting at byte %d", dec.InputOffset()))
				}
				stack = append(stack, &frame{object: d == '{', wantKey: d == '{', keys: map[string]struct{}{}})
			default:
				stack = stack[:len(stack)-1]
				valueDone()
			}
		} else {
			top := stack[len(stack)-1]
			if top.object && top.wantKey {
				key, _ := tok.(string)
				if _, dup := top.keys[key]; dup {
					return fieldErr(strconv.Quote(key), "unique object keys",
						fmt.Sprintf("a duplicate key before byte %d", dec.InputOffset()))
				}
				top.keys[key] = struct{}{}
				top.wantKey = false
			} else {
				valueDone()
			}
		}
		if len(stack) == 0 {
			break
		}
	}
	if end := dec.InputOffset(); end != int64(len(text)) {
		return fieldErr("(top level)", "nothing after the closing '}'",
			fmt.Sprintf("%d more bytes at offset %d", int64(len(text))-end, end))
	}
	return nil
}

// object is a decoded JSON object with typed, path-aware accessors.
type object struct {
	path   string
	fields map[string]json.RawMessage
}

func child(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func decodeObject(path string, raw json.RawMessage) (*object, error) {
	if jsonKind(raw) != "object" {
		return nil, fieldErr(path, "object", describe(raw))
	}
	o := &object{path: path}
	if err := json.Unmarshal(raw, &o.fields); err != nil {
		return nil, fmt.Errorf("LUKS2 JSON %s: %w", path, err)
	}
	return o, nil
}

func (o *object) has(name string) bool {
	_, ok := o.fields[name]
	return ok
}

func (o *object) obj(name string) (*object, error) {
	return decodeObject(child(o.path, name), o.fields[name])
}

// str returns a mandatory non-empty string (cryptsetup treats "" as absent).
func (o *object) str(name string) (string, error) {
	raw := o.fields[name]
	var s string
	if jsonKind(raw) != "string" || json.Unmarshal(raw, &s) != nil {
		return "", fieldErr(child(o.path, name), "string", describe(raw))
	}
	if s == "" {
		return "", fieldErr(child(o.path, name), "non-empty string", "empty string")
	}
	return s, nil
}

// u64 returns a 64-bit number stored as a decimal string, the LUKS2 convention
// for offsets and sizes (JSON numbers lose precision above 2^53).
func (o *object) u64(name string) (uint64, error) {
	raw := o.fields[name]
	var s string
	if jsonKind(raw) != "string" || json.Unmarshal(raw, &s) != nil {
		return 0, fieldErr(child(o.path, name), "decimal number in a string", describe(raw))
	}
	v, err := parseDecimal(s)
	if err != nil {
		return 0, fieldErr(child(o.path, name), "decimal number in a string", strconv.Quote(truncate(s)))
	}
	return v, nil
}

func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, errors.New("bad length")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a digit")
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// int31 returns a JSON integer. cryptsetup reads these with
// json_object_get_int, which clamps at 2^31-1; larger values are rejected
// here so both readers see the same number.
func (o *object) int31(name string) (uint32, error) {
	raw := o.fields[name]
	want := "integer 0..2147483647"
	if jsonKind(raw) != "number" {
		return 0, fieldErr(child(o.path, name), want, describe(raw))
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, fieldErr(child(o.path, name), want, describe(raw))
		}
	}
	v, err := strconv.ParseUint(string(raw), 10, 31)
	if err != nil {
		return 0, fieldErr(child(o.path, name), want, describe(raw))
	}
	return uint32(v), nil
}

func (o *object) base64(name string) ([]byte, error) {
	s, err := o.str(name)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fieldErr(child(o.path, name), "standard base64", strconv.Quote(truncate(s)))
	}
	return b, nil
}

func (o *object) strings(name string) ([]string, error) {
	raw := o.fields[name]
	path := child(o.path, name)
	if jsonKind(raw) != "array" {
		return nil, fieldErr(path, "array of strings", describe(raw))
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("LUKS2 JSON %s: %w", path, err)
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		var s string
		if jsonKind(it) != "string" || json.Unmarshal(it, &s) != nil {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", path, i), "string", describe(it))
		}
		out = append(out, s)
	}
	return out, nil
}

// ids returns an array of object ids ("0", "1", ...).
func (o *object) ids(name string) ([]int, error) {
	strs, err := o.strings(name)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(strs))
	for i, s := range strs {
		id, err := parseID(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", child(o.path, name), i),
				fmt.Sprintf("object id 0..%d", maxObjectID), strconv.Quote(truncate(s)))
		}
		out = append(out, id)
	}
	return out, nil
}

// parseID accepts the canonical decimal form only ("7", not "07"): lookups
// by id are string comparisons in cryptsetup.
func parseID(s string) (int, error) {
	v, err := parseDecimal(s)
	if err != nil || v > maxObjectID || (len(s) > 1 && s[0] == '0') {
		return 0, errors.New("bad object id")
	}
	return int(v), nil
}

// idMap decodes an object keyed by object ids.
func (o *object) idMap(name string) (map[int]json.RawMessage, error) {
	sub, err := o.obj(name)
	if err != nil {
		return nil, err
	}
	out := make(map[int]json.RawMessage, len(sub.fields))
	for k, v := range sub.fields {
		id, err := parseID(k)
		if err != nil {
			return nil, fieldErr(child(sub.path, strconv.Quote(truncate(k))),
				fmt.Sprintf("object id 0..%d as key", maxObjectID), "key "+strconv.Quote(truncate(k)))
		}
		out[id] = v
	}
	return out, nil
}
