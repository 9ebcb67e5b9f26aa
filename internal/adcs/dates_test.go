package adcs_test

import (
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
)

func TestDates(t *testing.T) {
	berlin := time.FixedZone("CEST", 2*3600)
	tests := []struct {
		format, value string
		loc           *time.Location
		want          time.Time
	}{
		{"US", "5/28/2026 3:34 PM", nil, date(2026, 5, 28, 15, 34)},
		{"US", "05/28/2026 03:34:12 PM", nil, date(2026, 5, 28, 15, 34).Add(12 * time.Second)},
		{"US", "5/28/2026 3:34:12.345 PM", nil, date(2026, 5, 28, 15, 34).Add(12*time.Second + 345*time.Millisecond)},
		{"US", "5/28/2026  3:34\u00a0PM", nil, date(2026, 5, 28, 15, 34)},
		{"US", "5/28/2026 3:34 PM", berlin, date(2026, 5, 28, 13, 34)},
		{"UK", "28/05/2026 15:34", nil, date(2026, 5, 28, 15, 34)},
		{"UK", "28/05/2026 15:34:12,5", nil, date(2026, 5, 28, 15, 34).Add(12*time.Second + 500*time.Millisecond)},
		{"uk", "1/6/2025 9:00", nil, date(2025, 6, 1, 9, 0)},
		{"ISO", "2026-05-28 15:34", nil, date(2026, 5, 28, 15, 34)},
		{"ISO", "2026-05-28 15:34:12", berlin, date(2026, 5, 28, 13, 34).Add(12 * time.Second)},
		{"DE", "28.05.2026 15:34", nil, date(2026, 5, 28, 15, 34)},
		{"", "2026-05-28 15:34", nil, date(2026, 5, 28, 15, 34)},
		{"", "5/28/2026 3:34 PM", nil, date(2026, 5, 28, 15, 34)},
		{"2006.01.02. 15:04", "2026.05.28. 15:34", nil, date(2026, 5, 28, 15, 34)},
	}
	for _, tt := range tests {
		t.Run(tt.format+" "+tt.value, func(t *testing.T) {
			cells := append([]string(nil), goodCells...)
			cells[3] = tt.value
			cells[4], cells[5] = tt.value, tt.value
			rows := mustRead(t, []byte(csvHeader+"\n"+csvRow(cells)+"\n"), adcs.Options{DateFormat: tt.format, Location: tt.loc})
			if len(rows) != 1 || !rows[0].NotBefore.Equal(tt.want) || rows[0].NotBefore.Location() != time.UTC {
				t.Errorf("got %v, want %v", rows, tt.want)
			}
		})
	}
	for _, bad := range []struct{ format, value string }{
		{"US", "28/05/2026 15:34"}, {"UK", "5/28/2026 3:34 PM"}, {"ISO", "5/28/2026 3:34 PM"}, {"US", "5/28/2026"},
	} {
		cells := append([]string(nil), goodCells...)
		cells[3] = bad.value
		res := readAll(t, []byte(csvHeader+"\n"+csvRow(cells)+"\n"), adcs.Options{DateFormat: bad.format})
		checkOneError(t, res, 2, "NotBefore", "is not a date in the "+bad.format)
	}
}
