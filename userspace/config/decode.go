package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"

	kjson "sigs.k8s.io/json"
)

// decodeStrict fills into (a pointer to a struct) from obj, the generic form
// of one document, and returns every problem with its field path.
//
// sigs.k8s.io/json's UnmarshalStrict reports every unknown and duplicate
// field, but stops at the first value of the wrong type and loses the path
// of errors raised by a type's own UnmarshalJSON. So obj is first checked
// against the Go type here, which finds all of them with their paths and
// prunes the offending values; the strict decoder then decodes what is
// left, so that the rest of the resource can still be validated and every
// problem reported at once. It stays as a second line of defence: what it
// finds on a document the check passed is reported too.
//
// ok is false when nothing could be decoded.
func decodeStrict(obj map[string]any, into any) (probs []fieldProblem, ok bool) {
	if !checkType(obj, reflect.TypeOf(into).Elem(), "", &probs) {
		return probs, false
	}
	data, err := json.Marshal(obj)
	if err != nil {
		return append(probs, fieldProblem{reason: fmt.Sprintf("cannot be encoded as JSON: %v", err)}), false
	}
	strict, err := kjson.UnmarshalStrict(data, into)
	if len(probs) > 0 {
		return probs, err == nil
	}
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return []fieldProblem{{field: te.Field, reason: fmt.Sprintf("must be %s, got %s", typeName(te.Type), te.Value)}}, false
		}
		return []fieldProblem{{reason: err.Error()}}, false
	}
	for _, e := range strict {
		p := fieldProblem{reason: e.Error()}
		var fe kjson.FieldError
		if errors.As(e, &fe) {
			p.field = fe.FieldPath()
			p.reason = strings.TrimSuffix(e.Error(), " \""+fe.FieldPath()+"\"")
		}
		probs = append(probs, p)
	}
	return probs, true
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// checkType reports where v, a generic JSON value, does not fit t. It
// returns false when v does not fit; the caller then removes v from its
// object or list, so that decoding the rest succeeds.
func checkType(v any, t reflect.Type, path string, probs *[]fieldProblem) bool {
	fail := func(reason string) bool {
		*probs = append(*probs, fieldProblem{field: path, reason: reason})
		return false
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		data, err := json.Marshal(v)
		if err != nil {
			return fail(err.Error())
		}
		if err := reflect.New(t).Interface().(json.Unmarshaler).UnmarshalJSON(data); err != nil {
			return fail(err.Error())
		}
		return true
	}
	switch t.Kind() {
	case reflect.Interface:
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return fail("must be an object, got " + describe(v))
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(obj) {
			p := childPath(path, k)
			f, ok := fields[k]
			if !ok {
				*probs = append(*probs, fieldProblem{field: p, reason: "unknown field"})
				delete(obj, k)
				continue
			}
			if !checkType(obj[k], f.Type, p, probs) {
				delete(obj, k)
			}
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			return fail("must be an object, got " + describe(v))
		}
		for _, k := range sortedKeys(obj) {
			if !checkType(obj[k], t.Elem(), childPath(path, k), probs) {
				delete(obj, k)
			}
		}
	case reflect.Slice, reflect.Array:
		list, ok := v.([]any)
		if !ok {
			return fail("must be a list, got " + describe(v))
		}
		for i, item := range list {
			if !checkType(item, t.Elem(), indexPath(path, i), probs) {
				list[i] = nil
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			reason := "must be a string, got " + describe(v)
			if isScalar(v) {
				reason += fmt.Sprintf(" (quote it: \"%v\")", v)
			}
			return fail(reason)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return fail("must be true or false, got " + describe(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if u, big := v.(uint64); big {
			return fail(fmt.Sprintf("integer %d is out of range", u))
		}
		n, ok := integer(v)
		if !ok {
			return fail("must be an integer, got " + describe(v))
		}
		if reflect.Zero(t).OverflowInt(n) {
			return fail(fmt.Sprintf("integer %d is out of range", n))
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := integer(v)
		if !ok || n < 0 {
			return fail("must be a non-negative integer, got " + describe(v))
		}
		if reflect.Zero(t).OverflowUint(uint64(n)) {
			return fail(fmt.Sprintf("integer %d is out of range", n))
		}
	case reflect.Float32, reflect.Float64:
		switch v.(type) {
		case int64, uint64, float64:
		default:
			return fail("must be a number, got " + describe(v))
		}
	}
	return true
}

// integer accepts int64 and integral floats (JSON has one number type).
func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case float64:
		if n == math.Trunc(n) && n >= math.MinInt64 && n < math.MaxInt64 {
			return int64(n), true
		}
	}
	return 0, false
}

func isScalar(v any) bool {
	switch v.(type) {
	case int64, uint64, float64, bool:
		return true
	}
	return false
}

// describe names the JSON type of v for a message, with short values shown.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		if len(x) > 40 {
			return "a string"
		}
		return fmt.Sprintf("string %q", x)
	case bool:
		return fmt.Sprintf("boolean %t", x)
	case int64, uint64, float64:
		return fmt.Sprintf("number %v", x)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func typeName(t reflect.Type) string {
	if t == nil {
		return "a value of another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

// jsonFields maps the JSON names of t's fields (case-sensitive, as
// Kubernetes decodes) to the fields.
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := make(map[string]reflect.StructField, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			if tag == "-" {
				continue
			}
			if n, _, _ := strings.Cut(tag, ","); n != "" {
				name = n
			}
		}
		out[name] = f
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
