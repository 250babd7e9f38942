package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The schema is the Config struct itself: sections are structs, keys are their yaml tags and
// leaves are one of the kinds below. Walking it by reflection keeps the decoder, the
// command-line overrides and the canonical encoding from ever disagreeing on the key set.

type leafKind int

const (
	kindSection leafKind = iota
	kindEnum             // typed string constant implementing enum
	kindText             // encoding.TextUnmarshaler: Duration, Size, SizeOrPercent, GUID, HexBytes
	kindBool
	kindString
	kindList // []string
)

var (
	enumType            = reflect.TypeFor[enum]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	stringListType      = reflect.TypeFor[[]string]()
)

func kindOf(t reflect.Type) leafKind {
	switch {
	case t.Implements(enumType) && t.Kind() == reflect.String:
		return kindEnum
	case reflect.PointerTo(t).Implements(textUnmarshalerType):
		return kindText
	case t.Kind() == reflect.Struct:
		return kindSection
	case t.Kind() == reflect.Bool:
		return kindBool
	case t.Kind() == reflect.String:
		return kindString
	case t == stringListType:
		return kindList
	}
	panic("config: schema has a field of unsupported type " + t.String())
}

type field struct {
	name  string // YAML key
	index int    // struct field index
}

// fieldsOf lists a section's keys in declaration order, which is also the documented order.
func fieldsOf(t reflect.Type) []field {
	out := make([]field, 0, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		out = append(out, field{name: name, index: i})
	}
	return out
}

func fieldNames(t reflect.Type) string {
	var names []string
	for _, f := range fieldsOf(t) {
		names = append(names, f.name)
	}
	return strings.Join(names, ", ")
}

func lookupField(t reflect.Type, name string) (field, bool) {
	for _, f := range fieldsOf(t) {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

func reflectValue(c *Config) reflect.Value { return reflect.ValueOf(c).Elem() }

func joinPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// leafPaths lists every leaf key of the schema, dotted, in declaration order.
func leafPaths(t reflect.Type, parent string) []string {
	var out []string
	for _, f := range fieldsOf(t) {
		p := joinPath(parent, f.name)
		ft := t.Field(f.index).Type
		if kindOf(ft) == kindSection {
			out = append(out, leafPaths(ft, p)...)
		} else {
			out = append(out, p)
		}
	}
	return out
}

// setText sets a non-bool, non-list leaf from text. Errors carry the message only; callers
// add where and which key.
func setText(v reflect.Value, text string) error {
	switch kindOf(v.Type()) {
	case kindEnum:
		e := v.Interface().(enum)
		if !isAllowed(e, text) {
			return fmt.Errorf("%q is not allowed (allowed: %s)", text, allowedText(e))
		}
		v.SetString(text)
	case kindText:
		return v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(text))
	case kindString:
		v.SetString(text)
	default:
		panic("config: setText on " + v.Type().String())
	}
	return nil
}

// leafText is a scalar leaf's canonical text.
func leafText(v reflect.Value) string {
	switch kindOf(v.Type()) {
	case kindText:
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			panic("config: MarshalText of " + v.Type().String() + ": " + err.Error())
		}
		return string(b)
	case kindBool:
		return strconv.FormatBool(v.Bool())
	}
	return v.String()
}

// decoder turns YAML nodes into a Config, recording where each key's value was so that later
// validation errors can name the line.
type decoder struct {
	file  string
	lines map[string]int // dotted path (list items as path[i]) → line of its value
}

func (d *decoder) lineOf(path string) int { return d.lines[path] }

func (d *decoder) errorf(line int, key, format string, args ...any) *Error {
	return &Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return strconv.Quote(n.Value)
	}
	return "an alias"
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind == yaml.AliasNode {
		// Aliases make one value appear under several keys; a configuration has no need for
		// that, and refusing them rules out alias bombs.
		return d.errorf(n.Line, path, "YAML aliases are not supported; write the value out")
	}
	if isNull(n) {
		if path == "" {
			return nil
		}
		d.lines[path] = n.Line
		return nil // no value given: the default stays
	}
	d.lines[path] = n.Line
	switch kindOf(v.Type()) {
	case kindSection:
		if n.Kind != yaml.MappingNode {
			if path == "" {
				return d.errorf(n.Line, "", "expected a mapping of sections (%s), found %s", fieldNames(v.Type()), describe(n))
			}
			return d.errorf(n.Line, path, "expected a mapping with keys (%s), found %s", fieldNames(v.Type()), describe(n))
		}
		return d.mapping(n, v, path)
	case kindList:
		if n.Kind != yaml.SequenceNode {
			return d.errorf(n.Line, path, "expected a list, found %s", describe(n))
		}
		var items []string
		for i, item := range n.Content {
			itemPath := path + "[" + strconv.Itoa(i) + "]"
			if item.Kind != yaml.ScalarNode || isNull(item) {
				return d.errorf(item.Line, itemPath, "expected a string, found %s", describe(item))
			}
			d.lines[itemPath] = item.Line
			items = append(items, item.Value)
		}
		v.Set(reflect.ValueOf(items))
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return d.errorf(n.Line, path, "expected a single value, found %s", describe(n))
	}
	if v.Kind() == reflect.Bool {
		b, ok := parseBoolText(n.Value)
		if !ok {
			return d.errorf(n.Line, path, "%q is not a boolean", n.Value)
		}
		v.SetBool(b)
		return nil
	}
	if err := setText(v, n.Value); err != nil {
		return d.errorf(n.Line, path, "%s", err)
	}
	return nil
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return d.errorf(k.Line, path, "a key must be a plain name, found %s", describe(k))
		}
		full := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			return d.errorf(k.Line, "", "duplicate key %q (first on line %d)", full, first)
		}
		seen[k.Value] = k.Line
		f, ok := lookupField(v.Type(), k.Value)
		if !ok {
			return d.errorf(k.Line, "", "unknown key %q (allowed here: %s)", full, fieldNames(v.Type()))
		}
		if err := d.value(val, v.Field(f.index), full); err != nil {
			return err
		}
	}
	return nil
}

// encodeNode builds the YAML node tree of v, keys in schema order.
func encodeNode(v reflect.Value) *yaml.Node {
	switch kindOf(v.Type()) {
	case kindSection:
		n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		for _, f := range fieldsOf(v.Type()) {
			n.Content = append(n.Content,
				&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: f.name},
				encodeNode(v.Field(f.index)))
		}
		return n
	case kindList:
		n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
		for i := 0; i < v.Len(); i++ {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v.Index(i).String()})
		}
		return n
	case kindBool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: leafText(v)}
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: leafText(v)}
}

// encodeJSON builds the value tree for the canonical JSON: maps (encoding/json sorts their
// keys), booleans, lists of strings and every other leaf as its canonical text.
func encodeJSON(v reflect.Value) any {
	switch kindOf(v.Type()) {
	case kindSection:
		m := map[string]any{}
		for _, f := range fieldsOf(v.Type()) {
			m[f.name] = encodeJSON(v.Field(f.index))
		}
		return m
	case kindList:
		items := make([]string, v.Len())
		for i := range items {
			items[i] = v.Index(i).String()
		}
		return items
	case kindBool:
		return v.Bool()
	}
	return leafText(v)
}
