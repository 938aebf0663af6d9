"""Fake identities as a Chinese children's hospital records them: names in characters (a
family name of one or two characters, a given name of one or two), the parents (the
mother keeps her own family name), an 18-digit resident ID number with a valid check
digit, mobile and landline numbers, an address, the hospital, its department and the
outpatient and inpatient numbers. De-identification must remove every one of them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

_FAMILY = "王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 林 高 罗 郑 梁 谢 宋 唐 单 曾 欧阳 司马 诸葛"
FAMILY_NAMES = _FAMILY.split()
_BOYS, _GIRLS = "浩宇轩子涵博文俊杰睿泽晨阳一铭明晓嘉天思承宸", "欣怡梓萱涵雨诗琪可馨佳悦思彤晓子一诺婉清若静"
GIVEN_CHARACTERS = {"M": list(_BOYS), "F": list(_GIRLS)}
_ADULTS = "建国 秀英 桂兰 志强 丽娟 海燕 伟 芳 军 敏 静 磊 洋 艳 勇 娜 涛 霞 鹏 婷"
ADULT_GIVEN = _ADULTS.split()
PLACES = (  # province, city, districts, roads
    ("浙江省", "杭州市", ("西湖区", "上城区", "拱墅区"), ("文三路", "天目山路", "庆春路")),
    ("广东省", "深圳市", ("南山区", "福田区", "宝安区"), ("深南大道", "科苑路", "华强北路")),
    ("四川省", "成都市", ("武侯区", "锦江区", "青羊区"), ("人民南路", "红星路", "蜀都大道")),
    ("湖北省", "武汉市", ("江汉区", "武昌区", "洪山区"), ("解放大道", "中山路", "珞喻路")),
)
AREA_CODES = {"杭州市": "0571", "深圳市": "0755", "成都市": "028", "武汉市": "027"}
REGION_CODES = {"杭州市": "330106", "深圳市": "440305", "成都市": "510107", "武汉市": "420103"}
HOSPITALS = ("市儿童医院", "市妇幼保健院", "大学附属儿童医院", "市第一人民医院")
DEPARTMENTS = ("儿科门诊", "小儿呼吸科", "儿童发热门诊", "新生儿科", "放射科")
# ISO 7064 MOD 11-2 weights of the first 17 digits, and the check character of each remainder
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"


@dataclass(frozen=True)
class ChineseIdentity:
    family_name: str
    given_name: str
    birth_date: dt.date
    resident_id: str
    mother: str
    father: str
    mobile: str
    landline: str
    address: str
    city: str
    hospital: str
    department: str
    outpatient_number: str
    inpatient_number: str
    physician: str
    radiologist: str

    @property
    def name(self) -> str:
        return self.family_name + self.given_name


def chinese_identity(rng: np.random.Generator, sex: str, birth_date: dt.date, number: int) -> ChineseIdentity:
    """A fake identity; `number` (unique in the data set) makes its ID and record numbers unique."""

    def pick(options) -> str:
        return options[int(rng.integers(len(options)))]

    def adult() -> str:
        return pick(FAMILY_NAMES) + pick(ADULT_GIVEN)

    family = pick(FAMILY_NAMES)
    given = "".join(pick(GIVEN_CHARACTERS[sex]) for _ in range(1 + int(rng.random() < 0.7)))
    province, city, districts, roads = PLACES[int(rng.integers(len(PLACES)))]
    district, road = pick(districts), pick(roads)
    building, entrance, floor = (int(rng.integers(1, top)) for top in (30, 6, 30))
    flat = f"{building}栋{entrance}单元{floor}0{int(rng.integers(1, 5))}室"
    sequence = 2 * (number % 500) + (1 if sex == "M" else 0)  # odd for boys, even for girls
    return ChineseIdentity(
        family_name=family,
        given_name=given,
        birth_date=birth_date,
        resident_id=resident_id(REGION_CODES[city], birth_date, sequence),
        mother=adult(),
        father=family + pick(ADULT_GIVEN),
        mobile=f"1{pick('3456789')}{int(rng.integers(10**8, 10**9))}",
        landline=f"{AREA_CODES[city]}-{int(rng.integers(10**7 // 2, 10**7)) * 10 + number % 10}",
        address=f"{province}{city}{district}{road}{int(rng.integers(1, 900))}号{flat}",
        city=city,
        hospital=city.removesuffix("市") + pick(HOSPITALS),
        department=pick(DEPARTMENTS),
        outpatient_number=f"MZ{number:010d}",
        inpatient_number=f"ZY{number:08d}",
        physician=adult(),
        radiologist=adult(),
    )


def resident_id(region: str, birth_date: dt.date, sequence: int) -> str:
    """An 18-character resident ID number: region, birth date, a sequence (odd for men),
    and its check character (ISO 7064 MOD 11-2)."""
    body = f"{region}{birth_date:%Y%m%d}{sequence % 1000:03d}"
    weighted = sum(int(digit) * weight for digit, weight in zip(body, ID_WEIGHTS, strict=True))
    return body + ID_CHECK[weighted % 11]
