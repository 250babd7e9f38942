package logging

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap/zapcore"
)

// flatField is one leaf value of a zap field set: path holds the namespace and
// object keys leading to it, outermost first.
type flatField struct {
	path  []string
	value any
}

// flattenFields encodes zap fields into leaves, keeping the order in which
// fields were given (context fields first) so that records read naturally;
// keys produced by one field (inline objects) are sorted for determinism.
func flattenFields(fields []zapcore.Field) []flatField {
	var out []flatField
	var namespace []string
	for _, f := range fields {
		if f.Type == zapcore.NamespaceType {
			// Fields after a namespace nest inside it, as in zap's JSON output.
			namespace = append(slices.Clip(namespace), f.Key)
			continue
		}
		enc := zapcore.NewMapObjectEncoder()
		f.AddTo(enc)
		out = appendFlat(out, namespace, enc.Fields)
	}
	return out
}

func appendFlat(out []flatField, prefix []string, m map[string]any) []flatField {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		path := append(slices.Clip(prefix), k)
		if sub, ok := m[k].(map[string]any); ok && len(sub) > 0 {
			out = appendFlat(out, path, sub)
			continue
		}
		out = append(out, flatField{path: path, value: m[k]})
	}
	return out
}

// renderValue turns a leaf produced by zapcore.MapObjectEncoder into text.
func renderValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.FormatInt(int64(x), 10)
	case int8:
		return strconv.FormatInt(int64(x), 10)
	case int16:
		return strconv.FormatInt(int64(x), 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case uint:
		return strconv.FormatUint(uint64(x), 10)
	case uint8:
		return strconv.FormatUint(uint64(x), 10)
	case uint16:
		return strconv.FormatUint(uint64(x), 10)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case uintptr:
		return "0x" + strconv.FormatUint(uint64(x), 16)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case complex128:
		return strconv.FormatComplex(x, 'g', -1, 128)
	case complex64:
		return strconv.FormatComplex(complex128(x), 'g', -1, 64)
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case time.Duration:
		return x.String()
	case []byte:
		// zap.Binary: same base64 form zap's JSON encoder uses.
		return base64.StdEncoding.EncodeToString(x)
	case error:
		return x.Error()
	case fmt.Stringer:
		return x.String()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(b)
}
