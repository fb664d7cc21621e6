package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
)

// marshalJSON encodes v, typically a CRI message, as indented JSON with
// the protobuf field names (snake_case, as the CRI's Go types name them in
// their json tags) like encoding/json, but:
//
//   - every field is written, zero values included (encoding/json would
//     drop them: the CRI types tag every field omitempty, so a container
//     in state CONTAINER_CREATED, an exit code 0 or a used size of 0
//     would vanish);
//   - enums are written by name ("CONTAINER_RUNNING", "NODE"), not number;
//   - protobuf's bookkeeping fields (XXX_*) are left out.
//
// Byte slices are base64, as encoding/json writes them; int64 and uint64
// are JSON numbers. Struct fields come in declaration order (the .proto's),
// map keys sorted.
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := encodeValue(&buf, reflect.ValueOf(v)); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

var stringerType = reflect.TypeOf((*fmt.Stringer)(nil)).Elem()

func encodeValue(buf *bytes.Buffer, v reflect.Value) error {
	if !v.IsValid() {
		buf.WriteString("null")
		return nil
	}
	// Types that know how to encode themselves (the client's own answers
	// may hold such values) do so.
	if v.Type().Implements(reflect.TypeOf((*json.Marshaler)(nil)).Elem()) {
		if (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) && v.IsNil() {
			buf.WriteString("null")
			return nil
		}
		b, err := json.Marshal(v.Interface())
		if err != nil {
			return err
		}
		buf.Write(b)
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			buf.WriteString("null")
			return nil
		}
		return encodeValue(buf, v.Elem())
	case reflect.Struct:
		return encodeStruct(buf, v)
	case reflect.Map:
		return encodeMap(buf, v)
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return encodeLeaf(buf, v)
		}
		buf.WriteByte('[')
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encodeValue(buf, v.Index(i)); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
		return nil
	case reflect.Int32:
		// The CRI's enums are named int32 types with a String method.
		if v.Type().Name() != "int32" && v.Type().Implements(stringerType) {
			b, err := json.Marshal(v.Interface().(fmt.Stringer).String())
			if err != nil {
				return err
			}
			buf.Write(b)
			return nil
		}
	}
	return encodeLeaf(buf, v)
}

func encodeLeaf(buf *bytes.Buffer, v reflect.Value) error {
	b, err := json.Marshal(v.Interface())
	if err != nil {
		return err
	}
	buf.Write(b)
	return nil
}

func encodeStruct(buf *bytes.Buffer, v reflect.Value) error {
	t := v.Type()
	buf.WriteByte('{')
	first := true
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() || len(f.Name) >= 4 && f.Name[:4] == "XXX_" {
			continue
		}
		name := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			if tag == "-" {
				continue
			}
			for j := 0; j < len(tag); j++ {
				if tag[j] == ',' {
					tag = tag[:j]
					break
				}
			}
			if tag != "" {
				name = tag
			}
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		b, _ := json.Marshal(name)
		buf.Write(b)
		buf.WriteByte(':')
		if err := encodeValue(buf, v.Field(i)); err != nil {
			return fmt.Errorf("field %s: %w", f.Name, err)
		}
	}
	buf.WriteByte('}')
	return nil
}

func encodeMap(buf *bytes.Buffer, v reflect.Value) error {
	if v.IsNil() {
		buf.WriteString("{}")
		return nil
	}
	keys := v.MapKeys()
	names := make([]string, len(keys))
	for i, k := range keys {
		if k.Kind() != reflect.String {
			return fmt.Errorf("map key of kind %s", k.Kind())
		}
		names[i] = k.String()
	}
	sort.Sort(byName{names, keys})
	buf.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, _ := json.Marshal(names[i])
		buf.Write(b)
		buf.WriteByte(':')
		if err := encodeValue(buf, v.MapIndex(k)); err != nil {
			return err
		}
	}
	buf.WriteByte('}')
	return nil
}

// byName sorts map keys by their string.
type byName struct {
	names []string
	keys  []reflect.Value
}

func (b byName) Len() int           { return len(b.names) }
func (b byName) Less(i, j int) bool { return b.names[i] < b.names[j] }
func (b byName) Swap(i, j int) {
	b.names[i], b.names[j] = b.names[j], b.names[i]
	b.keys[i], b.keys[j] = b.keys[j], b.keys[i]
}
