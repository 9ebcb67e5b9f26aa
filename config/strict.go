package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
)

// FieldError is a configuration error tied to a JSON path such as
// "stepfort.admin.tokenTTL".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errorf builds a FieldError; plugins use it from Validate so the daemon can
// prefix the plugin's path.
func Errorf(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// prefix joins a parent path with a FieldError's path, or wraps a plain error.
func prefix(parent string, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		p := fe.Path
		switch {
		case p == "":
			p = parent
		case strings.HasPrefix(p, "["):
			p = parent + p
		default:
			p = parent + "." + p
		}
		return &FieldError{Path: p, Msg: fe.Msg}
	}
	return &FieldError{Path: parent, Msg: err.Error()}
}

// DecodeStrict decodes JSON into v (a pointer), rejecting unknown keys, type
// mismatches and trailing data, and reporting the JSON path of the first
// problem. Fields already set in v are kept when absent from the input, so v
// can carry defaults.
func DecodeStrict(data []byte, v any, path string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return &FieldError{Path: path, Msg: "invalid JSON: " + err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &FieldError{Path: path, Msg: "invalid JSON: trailing data"}
	}
	return decodeValue(data, reflect.ValueOf(v).Elem(), path)
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func decodeValue(data []byte, v reflect.Value, path string) error {
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		if err := v.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(data); err != nil {
			return &FieldError{Path: path, Msg: cleanJSONError(err)}
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
			v.SetZero()
			return nil
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return decodeValue(data, v.Elem(), path)
	case reflect.Struct:
		return decodeStruct(data, v, path)
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			break
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			return &FieldError{Path: path, Msg: "must be an object"}
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		keys := sortedKeys(m)
		for _, k := range keys {
			elem := reflect.New(v.Type().Elem()).Elem()
			if err := decodeValue(m[k], elem, join(path, k)); err != nil {
				return err
			}
			v.SetMapIndex(reflect.ValueOf(k).Convert(v.Type().Key()), elem)
		}
		return nil
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			break // []byte is base64 in JSON
		}
		var items []json.RawMessage
		if err := json.Unmarshal(data, &items); err != nil {
			return &FieldError{Path: path, Msg: "must be an array"}
		}
		s := reflect.MakeSlice(v.Type(), len(items), len(items))
		for i, item := range items {
			if err := decodeValue(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	}
	// Scalars (and []byte, json.RawMessage, any): let encoding/json do it.
	if err := json.Unmarshal(data, v.Addr().Interface()); err != nil {
		return &FieldError{Path: path, Msg: fmt.Sprintf("must be %s", describe(v.Type()))}
	}
	return nil
}

func decodeStruct(data []byte, v reflect.Value, path string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return &FieldError{Path: path, Msg: "must be an object"}
	}
	fields := map[string]int{}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = i
	}
	for _, k := range sortedKeys(m) {
		i, ok := fields[k]
		if !ok {
			return &FieldError{Path: join(path, k), Msg: fmt.Sprintf("unknown key (known keys: %s)", strings.Join(sortedKeys(fields), ", "))}
		}
		if err := decodeValue(m[k], v.Field(i), join(path, k)); err != nil {
			return err
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func describe(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	default:
		return "a valid " + t.String()
	}
}

func cleanJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("must be %s", describe(te.Type))
	}
	return err.Error()
}
